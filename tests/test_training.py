"""`taskdiv train`: LoRA on the tiny random model (weights change, loss drops, the run
directory loads with plain peft, reruns and resumes), and bad input."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import write_jsonl

from taskdiv import cli, training
from taskdiv.common.errors import DataError, TaskdivError
from taskdiv.engines import models
from taskdiv.training import TrainConfig, train


def _rows(n=24):
    return [{"id": f"r{i}", "task": "count", "prompt": f"Count to {i % 7 + 1}.",
             "response": " ".join(str(k) for k in range(1, i % 7 + 2))} for i in range(n)]


def _cfg(data, model, out, **kw):
    kw = {"epochs": 2, "lr": 1e-2, "batch_size": 8, "save_steps": 2, **kw}
    return TrainConfig(data=str(data), model=str(model), out=str(out), **kw)


def _completion_loss(model, tok, rows, chat):
    """Mean loss on the response tokens, computed directly from the logits."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for r in rows:
            p = models.encode_prompt(tok, r["prompt"], chat)
            c = models.encode_response(tok, r["prompt"], r["response"], chat)
            logits = model(torch.tensor([p + c])).logits[0].float()
            lp = torch.log_softmax(logits[len(p) - 1:-1], -1).gather(1, torch.tensor(c)[:, None])
            total -= lp.sum().item()
            count += len(c)
    return total / count


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One LoRA run on the tiny model, with the in-memory model's logits captured before saving."""
    import torch

    tmp = tmp_path_factory.mktemp("train")
    data = write_jsonl(tmp / "data.jsonl", _rows())
    probe = torch.tensor([[1, 20, 300, 4000, 50, 60]])
    captured = {}
    original = training._save

    def spy(model, tokenizer, run, **kw):
        from accelerate.utils import extract_model_from_parallel

        # Training wrapped forward() in bf16 autocast; compare the float32 weights themselves.
        model = extract_model_from_parallel(model, keep_fp32_wrapper=False).eval()
        with torch.no_grad():
            captured["logits"] = model(probe).logits.float().clone()
        original(model, tokenizer, run, **kw)

    training._save = spy
    try:
        run = train(_cfg(data, tiny_model_dir, tmp / "run", merge=True))
    finally:
        training._save = original
    return {"run": run, "data": data, "probe": probe, "logits": captured["logits"], "tmp": tmp}


def test_lora_changes_adapter_and_lowers_loss(trained, tiny_model_dir):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = trained["run"]
    assert (run / "done").exists() and (run / "config.yaml").exists()
    assert not (run / "checkpoints").exists(), "checkpoints are removed once the run is done"
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b, "the adapter holds LoRA B matrices"
    # PEFT initialises B to zero: any non-zero entry was put there by training.
    assert all(v.abs().max() > 0 for v in lora_b)

    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, len(log) + 1)), "one log line per step"
    assert len(log) == 6  # 24 examples / batch 8 x 2 epochs

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = _rows()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    before = _completion_loss(base, tok, rows, chat=True)
    tuned = PeftModel.from_pretrained(base, run / "adapter").eval()
    after = _completion_loss(tuned, tok, rows, chat=True)
    assert after < before - 0.5, (before, after)
    assert log[-1]["loss"] < log[0]["loss"]


def test_plain_peft_reproduces_trained_logits(trained, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = trained["run"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, run / "adapter").eval()
    with torch.no_grad():
        logits = model(trained["probe"]).logits.float()
    torch.testing.assert_close(logits, trained["logits"], atol=1e-4, rtol=1e-4)
    merged = AutoModelForCausalLM.from_pretrained(run / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(trained["probe"]).logits.float(), trained["logits"], atol=1e-4, rtol=1e-4)
    # taskdiv's own resolution of the run directory reads the same weights.
    ref = models.resolve(str(run))
    assert ref.chat is True and ref.path == str(run / "merged")


def test_rerun_of_finished_run_does_nothing(trained):
    run = trained["run"]
    stamp = (run / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    cfg = training.TrainConfig(**{**yaml_config(run), "data": str(trained["data"]), "out": str(run)})
    assert train(cfg) == run
    assert (run / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def yaml_config(run):
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    return {f: cfg[f] for f in TrainConfig.__dataclass_fields__ if f in cfg}


def test_interrupted_run_resumes_to_the_same_adapter(trained, tiny_model_dir, tmp_path, monkeypatch):
    """Ctrl-C after step 3 (checkpoint at step 2); the rerun resumes and ends where an
    uninterrupted run with the same seed ends."""
    import torch
    from safetensors.torch import load_file

    run = tmp_path / "run"
    cfg = _cfg(trained["data"], tiny_model_dir, run, merge=True)
    make = training._callbacks

    def interrupting(log_path, resume_step):
        cb = make(log_path, resume_step)
        step_end = cb.on_step_end

        def on_step_end(args, state, control, **kw):
            step_end(args, state, control, **kw)
            if state.global_step == 3:
                raise KeyboardInterrupt

        cb.on_step_end = on_step_end
        return cb

    monkeypatch.setattr(training, "_callbacks", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.undo()
    assert not (run / "done").exists() and not (run / "adapter").exists()
    assert (run / "checkpoints" / "checkpoint-2").is_dir()
    train(cfg)
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in log] == list(range(1, 7)), log
    # The training time carries on from the checkpoint's: step by step, and in the metrics.
    seconds = [rec["seconds"] for rec in log]
    # The log rounds to 0.1 s: on an idle machine the tiny model's first step logs 0.0.
    assert seconds == sorted(seconds) and seconds[-1] > 0, seconds
    metrics = json.loads((run / "train_metrics.json").read_text())
    assert metrics["resumed_from_step"] == 2
    assert metrics["train_seconds"] == pytest.approx(seconds[1] + metrics["train_runtime"], abs=0.2)
    ours = load_file(run / "adapter" / "adapter_model.safetensors")
    straight = load_file(trained["run"] / "adapter" / "adapter_model.safetensors")
    assert ours.keys() == straight.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], straight[k], atol=1e-5, rtol=1e-4)


def test_bad_input_is_refused_before_anything_is_written(trained, tiny_model_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        train(_cfg(empty, tiny_model_dir, tmp_path / "r1"))
    assert not (tmp_path / "r1").exists()

    rows = _rows(6)
    rows[2]["response"] = ""
    del rows[4]["response"]
    partial = write_jsonl(tmp_path / "partial.jsonl", rows)
    with pytest.raises(DataError, match=r"2 row\(s\) have no response: ids r2 \(row 3\), r4 \(row 5\)"):
        train(_cfg(partial, tiny_model_dir, tmp_path / "r2"))
    assert not (tmp_path / "r2").exists()

    no_response = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi", "task": "t"}])
    with pytest.raises(DataError, match="no 'response' field"):
        train(_cfg(no_response, tiny_model_dir, tmp_path / "r3"))

    # The finished run belongs to the tiny model: another --model must not touch it.
    run = trained["run"]
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(TaskdivError, match="is a run of model .* but --model is 'smollm2-135m-instruct'"):
        train(_cfg(trained["data"], "smollm2-135m-instruct", run))
    with pytest.raises(TaskdivError, match=r"different options \(lr"):
        train(_cfg(trained["data"], tiny_model_dir, run, lr=1e-3, merge=True))
    assert sorted(p.name for p in run.iterdir()) == before


def test_help_of_train_and_evaluate(capsys):
    for words in (["train"], ["evaluate"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(words + ["--help"])
        assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--method {lora,full}" in out and "--suite {heldout,mmlu,bbh,judge}" in out


def test_cli_train_prints_loss(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", _rows(8))
    code = cli.main(["train", str(data), "--model", str(tiny_model_dir), "--out", str(tmp_path / "run"),
                     "--epochs", "1", "--no-progress"])
    assert code == 0
    assert "loss: first" in capsys.readouterr().out
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
    shutil.rmtree(tmp_path / "run")


def test_failed_save_leaves_no_staging_directory(tiny_model_dir, tmp_path):
    """_save writes through fileio.atomic_dir: when writing merged/ fails, the old merged/
    stays as it was and no staging directory is left in RUN."""
    import peft
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    tok = models.load_tokenizer(models.resolve(str(tiny_model_dir)))
    run = tmp_path / "run"
    (run / "merged").mkdir(parents=True)
    (run / "merged" / "old.txt").write_text("the previous merge")

    class HalfWritten:
        def save_pretrained(self, d, **kw):
            d.mkdir(exist_ok=True)  # as save_pretrained does
            (d / "model.safetensors").write_bytes(b"the first bytes")
            raise OSError("No space left on device")

    model.merge_and_unload = HalfWritten
    with pytest.raises(OSError, match="No space left"):
        training._save(model, tok, run, merge=True, lora=True)
    assert sorted(p.name for p in run.iterdir()) == ["adapter", "merged"]
    assert (run / "adapter" / "adapter_config.json").exists()
    assert [p.name for p in (run / "merged").iterdir()] == ["old.txt"]


@pytest.mark.parametrize("option, value, message", [
    ("lr", -0.01, "--lr must be positive"), ("lora_r", 0, "--lora-r must be at least 1"),
    ("lora_dropout", 1.5, r"--lora-dropout must be in \[0, 1\)"), ("warmup", -3, "--warmup must be 0 or more"),
    ("weight_decay", -1.0, "--weight-decay must be 0 or more"), ("lora_alpha", 0, "--lora-alpha must be positive"),
    ("target_modules", "q_proj,,v_proj", "an empty name")])
def test_bad_option_values_are_refused_before_the_run_directory(tiny_model_dir, tmp_path, option, value, message):
    data = write_jsonl(tmp_path / "data.jsonl", _rows(4))
    with pytest.raises(TaskdivError, match=message):
        train(_cfg(data, tiny_model_dir, tmp_path / "run", **{option: value}))
    assert not (tmp_path / "run").exists()


def test_a_target_module_typo_is_refused_and_the_corrected_rerun_accepted(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", _rows(8))
    run = tmp_path / "run"
    with pytest.raises(TaskdivError, match=r"'v_prj' is not a module of this model; its linear layers are .*q_proj"):
        train(_cfg(data, tiny_model_dir, run, target_modules="q_proj,v_prj", epochs=1))
    # The failed attempt left config.yaml but nothing trained: other options start afresh.
    train(_cfg(data, tiny_model_dir, run, target_modules="q_proj,v_proj", epochs=1))
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    # --merge on the finished run writes merged/ from its adapter, which loads as a plain model.
    assert not (run / "merged").exists()
    train(_cfg(data, tiny_model_dir, run, target_modules="q_proj,v_proj", epochs=1, merge=True))
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(run / "merged") is not None


def test_a_dataset_directory_is_hashed_by_content(tmp_path):
    from taskdiv.common.inputs import file_sha256

    d = tmp_path / "ds"
    d.mkdir()
    (d / "data-00000.arrow").write_bytes(b"one")
    first = file_sha256(str(d))
    (d / "data-00000.arrow").write_bytes(b"two")
    assert file_sha256(str(d)) != first
    assert file_sha256("hf:some/dataset") == file_sha256("hf:some/dataset")


def test_group_by_length_computes_less_padding(tiny_model_dir, tmp_path):
    """Lengths that vary 30-fold: grouped batches pad far less than random ones, and the run
    records its padding ratio (tokens computed over real tokens)."""
    rows = [{"id": f"r{i}", "task": "t", "prompt": "word " * (3 if i % 2 else 60), "response": "yes"}
            for i in range(64)]  # transformers groups within megabatches of 64 // 4 = 16 here
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    ratios = {}
    for grouped in (False, True):
        run = train(_cfg(data, tiny_model_dir, tmp_path / f"run-{grouped}", epochs=1, group_by_length=grouped))
        ratios[grouped] = json.loads((run / "train_metrics.json").read_text())["padding_ratio"]
    assert ratios[False] > 1.4  # random batches of 8 mix both lengths
    assert ratios[True] < 1.25  # each megabatch of 16 sorted by length: at most one of its 2 batches mixed


def test_a_write_error_reads_the_errno_of_an_oserror_that_says_it_only_in_its_text(tmp_path):
    """An OSError of Arrow's carries its errno only in its message ('[errno 28]'). Before: no
    error of the system's was found behind it, and the library's words were shown."""
    error = training._write_error(OSError("Error writing bytes to file. Detail: [errno 28] No space left"), tmp_path)
    assert (error.errno, error.strerror, error.filename) == (28, "No space left on device", str(tmp_path))
    safetensors = training._write_error(RuntimeError("I/O error: No space left on device (os error 28)"), tmp_path)
    assert (safetensors.errno, safetensors.filename) == (28, str(tmp_path))
    assert training._write_error(ValueError("no errno here"), tmp_path) is None


def test_training_quiets_the_libraries_with_the_common_switch_and_keeps_its_own_bar(monkeypatch):
    """One way to quiet inner progress bars (common.progress.quiet_inner_progress), which training
    now takes too: the libraries' bars and the FutureWarnings asked for are off inside, taskdiv's
    own bar (train's steps) still shows with ours=False, and all is as it was afterwards."""
    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    from taskdiv.common import progress

    assert not hasattr(training, "_quiet"), "training's own twin of quiet_inner_progress is gone"
    monkeypatch.delenv("TASKDIV_INNER_PROGRESS_OFF", raising=False)
    monkeypatch.delenv("TASKDIV_NO_PROGRESS", raising=False)
    def libraries():
        return datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()

    def own_bar_shown():
        bar = progress.bar(total=1)
        shown = not bar.disable
        bar.close()  # which sets disable
        return shown

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an earlier --no-progress run in this process may pin them off
        datasets.enable_progress_bars()
        hf_logging.enable_progress_bar()
    before = libraries()
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with progress.quiet_inner_progress(ours=False, ignore=(FutureWarning,)):
            assert libraries() == (False, False)
            assert own_bar_shown(), "taskdiv's own bar (train's steps) is still shown"
            warnings.warn("deprecated", FutureWarning)
            warnings.warn("kept", UserWarning)
        assert [str(w.message) for w in shown] == ["kept"]
        warnings.warn("deprecated", FutureWarning)
    assert [str(w.message) for w in shown] == ["kept", "deprecated"]
    assert libraries() == before and "TASKDIV_INNER_PROGRESS_OFF" not in os.environ
    with progress.quiet_inner_progress():  # the experiment grid's: taskdiv's inner bars too
        assert not own_bar_shown()
    assert "TASKDIV_INNER_PROGRESS_OFF" not in os.environ


def test_the_cpu_loss_projects_response_positions_only_and_equals_trls(tiny_model_dir, tmp_path, monkeypatch):
    """On a CPU the loss takes logits only where a response token follows (TRL's fused head
    scores every position there): the same loss and the same LoRA gradients as TRL's, on a
    padded batch of prompts of several lengths; a batch without a response token gives a
    differentiable zero."""
    import datasets
    import pandas as pd
    import peft
    import torch
    import transformers
    import trl

    tok = models.load_tokenizer(models.resolve(str(tiny_model_dir)))
    rows = [{**r, "prompt": f"Count to {i % 7 + 1} please, slowly. " * (1 + i % 3)}
            for i, r in enumerate(_rows(8))]
    dataset = datasets.Dataset.from_dict(training.tokenize(pd.DataFrame(rows), tok, True, 512))
    transformers.set_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    args = trl.SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, completion_only_loss=True,
                         report_to="none", use_cpu=True, max_length=512)
    trainer = training._sft_trainer(trl)(model=model, args=args, train_dataset=dataset, processing_class=tok,
                                         peft_config=peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                     task_type="CAUSAL_LM"))
    batch = next(iter(trainer.get_train_dataloader()))
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    trainer.model.train()  # as Trainer.training_step sets it (LoRA dropout 0: the same forward)
    results = {}
    for compact in (True, False):
        monkeypatch.setattr(training, "COMPACT_HEAD", compact)
        trainer.model.zero_grad()
        got = trainer.compute_loss(trainer.model, dict(batch), return_outputs=compact,  # TRL's: deprecated
                                   num_items_in_batch=torch.tensor(labelled + 5))
        loss, outputs = got if compact else (got, None)
        loss.backward()
        grads = [p.grad.clone() for p in trainer.model.parameters() if p.requires_grad]
        results[compact] = loss.item(), grads, outputs
    (ours, ours_grads, ours_out), (theirs, their_grads, _) = results[True], results[False]
    assert ours_out.logits.shape[1] < batch["input_ids"].shape[1] - 1  # the prompts' positions were left out
    assert ours == pytest.approx(theirs, rel=1e-5) and ours > 0
    scale = max(g.abs().max().item() for g in their_grads)
    assert scale > 0 and all(torch.allclose(a, b, atol=1e-5 * scale) for a, b in zip(ours_grads, their_grads))

    monkeypatch.setattr(training, "COMPACT_HEAD", True)
    trainer.model.zero_grad()
    none = trainer.compute_loss(trainer.model, {**batch, "labels": torch.full_like(batch["labels"], -100)})
    none.backward()
    assert none.item() == 0.0
