"""Shared test fixtures: small pools written to disk, a tiny random causal LM.

The tiny model is a 2-layer Llama with random weights and the real SmolLM2 tokenizer
(from the embedded package), so tokenization, chat templates and padding behave as
they do with the real model while a forward pass costs milliseconds.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MMLU_DIR = SHARED / "data" / "mmlu"
BBH_DIR = SHARED / "data" / "bbh"
GAUNTLET_DIR = SHARED / "data" / "gauntlet"

os.environ.setdefault("TASKDIV_NO_PROGRESS", "1")
# Tests count what each run generates: the score cache shared between --out directories
# (which the tiny model's fixed weights would share across tests) is on only where a test
# turns it on.
os.environ.setdefault("TASKDIV_SHARED_SCORES", "0")
# The machine is shared: with OpenMP's default spin-waiting, torch's threads stall each
# other when cores are oversubscribed (measured 10-20x slower forward passes).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def small_pool(tmp_path) -> Path:
    """Three tasks of sizes 2, 5 and 9 with responses."""
    rows = []
    for task, n in (("a", 2), ("b", 5), ("c", 9)):
        rows += [{"id": f"{task}{i}", "prompt": f"Question {i} of task {task}?", "task": task,
                  "response": f"answer {i}"} for i in range(n)]
    return write_jsonl(tmp_path / "pool.jsonl", rows)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama saved with the SmolLM2 tokenizer (has a chat template)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from taskdiv.engines import models

    tok = models.load_tokenizer(models.resolve("smollm2-135m-instruct"))
    out = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- vLLM

VLLM_MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The Python of a venv with vLLM (`make vllm` builds .venv-vllm; `make test` passes it as
    TASKDIV_VLLM_PYTHON). Without one the vLLM tests skip, except where TASKDIV_VLLM_PYTHON
    or CI is set: there a missing vLLM fails them."""
    from taskdiv.common.errors import TaskdivError
    from taskdiv.engines.vllm_server import vllm_python as find

    try:
        return find()
    except TaskdivError as e:
        if os.environ.get("TASKDIV_VLLM_PYTHON") or os.environ.get("CI"):
            raise
        pytest.skip(f"no vLLM ({e})")


@pytest.fixture(scope="session")
def vllm_server(vllm_python, tmp_path_factory):
    """One real vLLM OpenAI server for the whole session (start-up: 30-70 s on 2 cores):
    SmolLM2-135M-Instruct (its dequantized safetensors directory) in float32, served as
    'smollm2-135m-instruct' on 127.0.0.1 and a free port; `.url` is its address. Stopped at
    the end of the session. TASKDIV_TEST_VLLM_URL: use that server instead (one started by
    hand that serves the same, to iterate on a test without a start-up per run)."""
    from types import SimpleNamespace

    from taskdiv.engines import models
    from taskdiv.engines.vllm_server import VLLMServer

    if os.environ.get("TASKDIV_TEST_VLLM_URL"):
        yield SimpleNamespace(url=os.environ["TASKDIV_TEST_VLLM_URL"])
        return
    ref = models.resolve(VLLM_MODEL)
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with VLLMServer(ref.path, python=vllm_python, dtype="float32", max_model_len=4096, served_name=VLLM_MODEL,
                    log_path=log) as server:
        yield server
