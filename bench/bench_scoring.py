"""Benchmark of `taskdiv score`: throughput against a naive loop, and per-task sampling.

    python bench/bench_scoring.py [--part throughput|sampling|all] [--model NAME] [--n 64]

1. Throughput: the same 64 benchmark prompts (a seeded sample of the bench:demo slice),
   scored by taskdiv's scorer (batched, sorted by length, KV cache, default dtype) and
   by a naive loop (one prompt at a time, `model.generate(output_logits=True)`,
   float32), 32 new tokens. Prints prompts/s of each and the ratio (target >= 3x);
   also the scorer in float32 (the batching gain alone), and how far its mean_prob is
   from the naive loop's (float32) and from float32 (the default dtype is bf16 where
   supported). The machine is shared and its load changes by the minute, so the
   prompts are taken in length-sorted chunks of one batch and every chunk is run by
   all three, one after the other: each sees the same load.
2. Sampling: the weighted-task-diversity allocation from `--per-task 16` against the
   one from scoring every prompt. Scoring all 26k prompts of the demo pool is far too
   slow here, so "every prompt" is the demo pool capped at 100 prompts per task
   (`bench:demo?max_pool=100`, 30 tasks), with 8 new tokens per prompt (as in
   ../shared/EXPERIMENT-NOTES.md) to keep the run short. The full run continues in
   the per-task run's cache, so its time is the sum of both (the same prompts, each
   generated once). Prints the fraction scored, the time ratio and the total
   variation distance between the allocations (target <= 0.05 with <= 20% scored),
   at three budgets; and the same for `--per-task 8 --target-ci 0.1`.

Timings exclude model loading (every side uses the same loaded model).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("TASKDIV_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from taskdiv.common.config import build  # noqa: E402
from taskdiv.common.writers import write_jsonl  # noqa: E402
from taskdiv.engines import local as generation  # noqa: E402
from taskdiv.engines import models
from taskdiv.pool.load import load_pool  # noqa: E402
from taskdiv.scoring import commands as scoring  # noqa: E402
from taskdiv.selection.commands import SelectConfig, select  # noqa: E402

THROUGHPUT_POOL = "bench:demo?max_pool=50"
SAMPLING_POOL = "bench:demo?max_pool=100"
SAMPLING_TOKENS = 8


def naive(model, tok, prompts, chat, max_new_tokens):
    """One prompt at a time with transformers' generate; mean_prob from the raw logits."""
    import torch

    out = []
    for p in prompts:
        ids = models.encode_prompt(tok, p, chat)
        with torch.inference_mode():
            res = model.generate(input_ids=torch.tensor([ids]),
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        new = res.sequences[0, len(ids):].tolist()
        out.append(float(np.mean([torch.softmax(s[0].float(), -1)[t].item() for s, t in zip(res.logits, new)])))
    return np.array(out)


def throughput(model_name: str, n: int, work: Path) -> None:
    frame = load_pool(THROUGHPUT_POOL).frame.sample(n=n, random_state=0).reset_index(drop=True)
    ref = models.resolve(model_name)
    print(f"model {model_name}; {n} prompts of {THROUGHPUT_POOL} (seeded sample); 32 new tokens; "
          f"default dtype here = {models.resolve_dtype('auto')}", flush=True)
    model, tok = generation.load_model(ref, "float32")
    chat = models.chat_default(ref, tok)
    frame["length"] = [len(models.encode_prompt(tok, p, chat)) for p in frame["prompt"]]
    frame = frame.sort_values(["length", "id"], ascending=[False, True]).reset_index(drop=True)
    batch = scoring.ScoreConfig.batch_size
    seconds = {"auto": 0.0, "float32": 0.0, "naive": 0.0}
    loaded_models = {"float32": (model, tok)}  # one model per dtype, kept for every chunk
    means = {k: [] for k in seconds}
    for start in range(0, n, batch):
        chunk = frame.iloc[start:start + batch]
        pool_file = work / f"tp-{start}.jsonl"
        write_jsonl(pool_file, chunk[["id", "prompt", "task"]].to_dict(orient="records"))
        for dtype in ("auto", "float32"):
            if dtype not in loaded_models:
                loaded_models[dtype] = generation.load_model(ref, dtype)
            cfg = build(scoring.ScoreConfig, {"pool": str(pool_file), "model": model_name, "dtype": dtype,
                                              "out": str(work / f"tp-{dtype}-{start}")})
            s = scoring.score(cfg, loaded=loaded_models[dtype])  # loading is not timed
            seconds[dtype] += s.attrs["generation_seconds"]
            means[dtype] += s.set_index("id").loc[chunk["id"], "mean_prob"].tolist()
        t = time.perf_counter()
        means["naive"] += naive(model, tok, chunk["prompt"].tolist(), chat, 32).tolist()
        seconds["naive"] += time.perf_counter() - t
        print(f"  prompts {start + 1}-{start + len(chunk)}: scorer (default dtype) {seconds['auto']:.0f} s, "
              f"scorer float32 {seconds['float32']:.0f} s, naive {seconds['naive']:.0f} s so far", flush=True)
    rates = {k: n / v for k, v in seconds.items()}
    means = {k: np.array(v) for k, v in means.items()}
    print(f"  taskdiv scorer, default dtype, batch {batch}: {rates['auto']:6.2f} prompts/s")
    print(f"  taskdiv scorer, float32,       batch {batch}: {rates['float32']:6.2f} prompts/s")
    print(f"  naive loop,     float32,       batch 1 : {rates['naive']:6.2f} prompts/s")
    print(f"  speed-up: default scorer / naive = {rates['auto'] / rates['naive']:.1f}x (target >= 3x); "
          f"float32 scorer / naive = {rates['float32'] / rates['naive']:.1f}x")
    d = np.abs(means["float32"] - means["naive"])
    print(f"  mean_prob, float32 scorer vs naive generate: max |diff| {d.max():.2e}")
    diff = means["auto"] - means["float32"]
    print(f"  mean_prob, default dtype vs float32: mean of the {n} prompts {means['auto'].mean():.4f} vs "
          f"{means['float32'].mean():.4f} (diff {diff.mean():+.4f}, target |diff| <= 0.01); per prompt mean "
          f"|diff| {np.abs(diff).mean():.4f}, max {np.abs(diff).max():.3f}", flush=True)


def _allocation(scores_csv: Path, budget: int) -> pd.Series:
    cfg = build(SelectConfig, {"pool": SAMPLING_POOL, "budget": str(budget), "strategy": "weighted-task-diversity",
                               "scores": str(scores_csv), "out": "unused"})
    _, allocation = select(cfg)
    return allocation.set_index("task")["allocated"]


def sampling(model_name: str, work: Path) -> None:
    ref = models.resolve(model_name)
    loaded = generation.load_model(ref, "auto")  # one load for the three runs below
    pool_size = len(load_pool(SAMPLING_POOL))
    print(f"model {model_name}; pool {SAMPLING_POOL} ({pool_size} prompts, 30 tasks) stands in for the full demo "
          f"pool (92k prompts; too slow to score in full here); {SAMPLING_TOKENS} new tokens", flush=True)
    runs = {}
    # (name, options, output directory): "every prompt" continues in the per-task-16 cache.
    for name, extra, out in (("per-task 8 + target-ci 0.1", {"per_task": 8, "target_ci": 0.1}, "ci"),
                             ("per-task 16", {"per_task": 16}, "sample"), ("every prompt", {}, "sample")):
        cfg = build(scoring.ScoreConfig, {"pool": SAMPLING_POOL, "model": model_name, "out": str(work / out),
                                          "max_new_tokens": SAMPLING_TOKENS, **extra})
        s = scoring.score(cfg, loaded=loaded)
        csv = work / f"{out}-{len(runs)}.csv"
        (work / out / "scores.csv").rename(csv)
        runs[name] = (csv, len(s), s.attrs["generation_seconds"])
        print(f"  {name:28s}: {len(s):5d} prompts scored ({len(s) / pool_size:5.1%}), {s.attrs['computed']} "
              f"generated in {s.attrs['generation_seconds']:6.1f} s", flush=True)
    full_csv, _, rest = runs["every prompt"]
    full_time = rest + runs["per-task 16"][2]
    for name in ("per-task 16", "per-task 8 + target-ci 0.1"):
        csv, scored, seconds = runs[name]
        print(f"  {name}: {scored / pool_size:.1%} of the prompts scored, time ratio {seconds / full_time:.2f}")
        for budget in (300, 1000, 2000):
            full = _allocation(full_csv, budget)
            part = _allocation(csv, budget).reindex(full.index)
            tvd = 0.5 * float(np.abs(full / budget - part / budget).sum())
            print(f"    budget {budget:5d}: total variation distance {tvd:.3f} (target <= 0.05)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["throughput", "sampling", "all"], default="all")
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--n", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        if args.part in ("throughput", "all"):
            print("-- throughput")
            throughput(args.model, args.n, Path(tmp))
        if args.part in ("sampling", "all"):
            print("-- sampling")
            sampling(args.model, Path(tmp))


if __name__ == "__main__":
    main()
