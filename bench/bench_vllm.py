"""Benchmark of `taskdiv score --engine vllm`: vLLM against the local engine and a batched
Hugging Face `generate`, on the same prompts and settings.

    python bench/bench_vllm.py [--n 256] [--chunk 64] [--dtype auto] [--model smollm2-135m-instruct]

The same N prompts (a seeded sample of the demo slice, bench:demo), the embedded SmolLM2
(its dequantized safetensors), the default dtype (bf16 where the CPU has it), 32 new
tokens stopping at EOS, as `taskdiv score` runs them:

    vllm    taskdiv's vLLM engine: `scoring.score(--engine vllm --vllm-url)` against a server
            this benchmark starts once (.venv-vllm, --enforce-eager); start-up reported apart
    local   taskdiv's local engine: `scoring.score` with the model loaded once (not timed)
    hf      `model.generate(output_logits=True)` in length-sorted, left-padded batches of 16,
            mean_prob from the logits (the baseline of the issue)

Prints prompts/s and generated tokens/s of each, the ratios vllm/local (target >= 1.5x on
2 cores) and vllm/hf, and how far vLLM's mean_prob is from the local engine's. The machine is
shared and its load changes by the minute, so the prompts are cut into chunks of --chunk
(sorted by length, longest first) and every chunk is run by the three, one after the other:
each sees the same load. vLLM needs work in flight to batch, so its chunks are whole requests
of 16 prompts, up to 16 at once (--concurrency), which is how `taskdiv score` sends them.
Needs .venv-vllm (`make vllm`) or TASKDIV_VLLM_PYTHON; without it, this benchmark says so and stops.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TASKDIV_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from taskdiv.common.config import build  # noqa: E402
from taskdiv.common.errors import TaskdivError  # noqa: E402
from taskdiv.common.writers import write_jsonl  # noqa: E402
from taskdiv.engines import local as generation  # noqa: E402
from taskdiv.engines import models
from taskdiv.pool.load import load_pool  # noqa: E402
from taskdiv.scoring import commands as scoring  # noqa: E402

POOL = "bench:demo"
NEW_TOKENS = 32
HF_BATCH = 16


def hf_generate(model, tok, ids: list[list[int]]) -> tuple[list[float], int]:
    """Batched `generate` with logits: (mean_prob of each prompt, generated tokens)."""
    import torch

    eos = set(generation._as_list(model.generation_config.eos_token_id)) | {tok.eos_token_id}
    means, tokens = [], 0
    for i in range(0, len(ids), HF_BATCH):
        batch = ids[i:i + HF_BATCH]
        input_ids, mask = models.left_pad(batch, tok.pad_token_id)
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id,
                                 top_p=None, top_k=None, temperature=None)
        new = out.sequences[:, input_ids.shape[1]:]
        probs = torch.stack([torch.softmax(step.float(), -1) for step in out.logits], 1)  # batch, steps, vocab
        chosen = probs.gather(2, new[:, :, None])[:, :, 0]
        for row, p in zip(new.tolist(), chosen.tolist()):
            n = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))  # up to and with the first EOS
            means.append(float(np.mean(p[:n])))
            tokens += n
    return means, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()

    from taskdiv.engines.vllm_server import VLLMServer, vllm_python

    try:
        python = vllm_python()
    except TaskdivError as e:
        print(f"skipped: {e}")
        return
    frame = load_pool(POOL).frame.sample(n=args.n, random_state=0).reset_index(drop=True)
    ref = models.resolve(args.model)
    dtype = models.dtype_name(args.dtype)
    model, tok = generation.load_model(ref, args.dtype)
    chat = models.chat_default(ref, tok)
    frame["ids"] = [models.encode_prompt(tok, p, chat) for p in frame["prompt"]]
    frame["length"] = frame["ids"].map(len)
    frame = frame.sort_values(["length", "id"], ascending=[False, True]).reset_index(drop=True)
    print(f"model {args.model}, {dtype}; {args.n} prompts of {POOL} (seeded sample, {frame['length'].median():.0f} "
          f"tokens median, {frame['length'].max()} max); {NEW_TOKENS} new tokens, stopping at EOS; "
          f"{os.cpu_count()} CPUs", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp, \
            VLLMServer(ref.path, python=python, dtype=dtype, max_model_len=models.context_length(model),
                       served_name=ref.name, log_path=Path(tmp) / "server.log") as server:
        print(f"  vLLM server start-up (--enforce-eager): {time.perf_counter() - started:.1f} s (not counted below)",
              flush=True)
        work = Path(tmp)
        seconds = {"vllm": 0.0, "local": 0.0, "hf": 0.0}
        tokens = {k: 0 for k in seconds}
        means = {k: [] for k in seconds}
        for start in range(0, args.n, args.chunk):
            chunk = frame.iloc[start:start + args.chunk]
            pool_file = work / f"chunk-{start}.jsonl"
            write_jsonl(pool_file, chunk[["id", "prompt", "task"]].to_dict(orient="records"))
            for engine in ("vllm", "local"):
                extra = {"engine": "vllm", "vllm_url": server.url} if engine == "vllm" else {}
                cfg = build(scoring.ScoreConfig, {"pool": str(pool_file), "model": args.model, "dtype": args.dtype,
                                                  "max_new_tokens": NEW_TOKENS, "out": str(work / f"{engine}-{start}"),
                                                  **extra})
                s = scoring.score(cfg, loaded=(model, tok) if engine == "local" else None)
                seconds[engine] += s.attrs["generation_seconds"]
                s = s.set_index("id").loc[chunk["id"]]
                tokens[engine] += int(s["tokens"].sum())
                means[engine] += s["mean_prob"].tolist()
            t = time.perf_counter()
            m, n_tok = hf_generate(model, tok, chunk["ids"].tolist())
            seconds["hf"] += time.perf_counter() - t
            tokens["hf"] += n_tok
            means["hf"] += m
            print(f"  prompts {start + 1}-{start + len(chunk)}: vllm {seconds['vllm']:.0f} s, local "
                  f"{seconds['local']:.0f} s, hf generate {seconds['hf']:.0f} s so far", flush=True)
    rates = {k: args.n / v for k, v in seconds.items()}
    for name, label in (("vllm", "taskdiv --engine vllm (server)"), ("local", "taskdiv --engine local"),
                        ("hf", f"HF generate, batches of {HF_BATCH}")):
        print(f"  {label:32s}: {rates[name]:6.2f} prompts/s, {tokens[name] / seconds[name]:7.1f} generated tokens/s")
    print(f"  vllm / local = {rates['vllm'] / rates['local']:.2f}x (target >= 1.5x); vllm / hf generate = "
          f"{rates['vllm'] / rates['hf']:.2f}x; local / hf generate = {rates['local'] / rates['hf']:.2f}x")
    d = np.abs(np.array(means["vllm"]) - np.array(means["local"]))
    print(f"  mean_prob, vllm vs local ({dtype}): mean |diff| {d.mean():.4f}, max {d.max():.3f}; "
          f"mean over the prompts {np.mean(means['vllm']):.4f} vs {np.mean(means['local']):.4f}", flush=True)


if __name__ == "__main__":
    main()
