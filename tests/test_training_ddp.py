"""`taskdiv train` under `torchrun --nproc_per_node 2` (DDP, gloo on CPU): one RUN/ written
by rank 0 alone, an adapter that loads, and resume after the launcher is stopped mid-run."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_jsonl


def torchrun(data: Path, model: Path, out: Path, **popen) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("torchrun")
    import os

    env = {**os.environ, "TASKDIV_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([str(exe), "--nproc_per_node", "2", "-m", "taskdiv.cli", "train", str(data),
                             "--model", str(model), "--out", str(out), "--epochs", "2", "--batch-size", "1",
                             "--save-steps", "1", "--dtype", "float32", "--lora-r", "4"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)


@pytest.mark.slow
def test_ddp_two_processes_write_one_run_that_resumes_and_loads(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"id": f"x{i}", "prompt": f"What is {i} plus {i}?",
                                                 "response": str(2 * i), "task": "add"} for i in range(24)])
    run = tmp_path / "run"
    first = torchrun(data, tiny_model_dir, run)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
        if any((d / "trainer_state.json").exists() for d in (run / "checkpoints").glob("checkpoint-*")
               if int(d.name.split("-")[1]) >= 3):
            break
        time.sleep(0.1)
    assert first.poll() is None, "the first run ended before it could be stopped:\n" + first.stdout.read()[-3000:]
    import psutil

    procs = [psutil.Process(first.pid), *psutil.Process(first.pid).children(recursive=True)]
    for p in procs:  # the launcher and both ranks, mid-run (the ranks may sit in their own sessions)
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)
    first.wait()
    assert not (run / "done").exists()

    second = torchrun(data, tiny_model_dir, run)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out[-3000:]
    assert sum(ln.startswith("run: ") for ln in out.splitlines()) == 1, "only rank 0 reports"
    # 24 examples / (2 ranks x batch 1) = 12 steps per epoch, 2 epochs.
    metrics = json.loads((run / "train_metrics.json").read_text())
    assert metrics["steps"] == 24 and metrics["resumed_from_step"] >= 3
    steps = [json.loads(ln)["step"] for ln in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 25)), "one log line per step: rank 0 alone writes, resumed steps not repeated"
    assert (run / "done").exists() and not (run / "checkpoints").exists()
    assert sorted(p.name for p in run.iterdir()) == ["adapter", "config.yaml", "done", "train_log.jsonl",
                                                     "train_metrics.json"]

    import peft
    import torch
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, run / "adapter")
    lora = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
    assert lora and any(v.abs().sum() > 0 for v in lora.values()), "the adapter was trained (lora_B leaves zero)"
