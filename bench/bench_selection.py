"""Benchmark: selection cost against reading the pool, and k-center at scale.

1. weighted-task-diversity on a generated pool of 1,000,000 prompts in 10,000 tasks
   (Zipf-skewed sizes) with a confidence for every prompt: the time of the whole
   `taskdiv select` (load + validate + scores + allocate + sample + write) next to
   the time just to read the same pool file; target: selection adds at most 1x.
2. k-center on 100,000 prompts with 384-dimensional embeddings (target < 60 s on 2
   cores), after checking it picks the same points as the naive reference.

    python bench/bench_selection.py
"""
import tempfile
import time
from pathlib import Path

import numpy as np

import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq

from taskdiv.data import load_pool
from taskdiv.kcenter import k_center, k_center_naive
from taskdiv.selection import SelectConfig, select, write_selection

def make_pool(root: Path, n=1_000_000, tasks=10_000, seed=0):
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, tasks + 1) ** 0.8
    task = rng.choice(tasks, size=n, p=weights / weights.sum())
    task[:tasks] = np.arange(tasks)  # every task has at least one prompt
    ids = np.char.add("p", np.arange(n).astype(str))
    names = np.char.add("task-", task.astype(str))
    prompts = np.char.add(np.char.add("Please answer question ", np.arange(n).astype(str)),
                          np.char.add(" about ", names))
    table = pa.table({"id": ids, "prompt": prompts, "task": names,
                      "response": np.char.add("answer ", np.arange(n).astype(str))})
    pool = root / "pool.jsonl"
    with open(pool, "w") as f:
        for batch in table.to_batches(100_000):
            f.write(batch.to_pandas().to_json(orient="records", lines=True))
    conf = np.clip(rng.beta(4, 3, size=n), 0, 1)
    scores = root / "scores.parquet"
    pq.write_table(pa.table({"id": ids, "confidence": conf}), scores)
    return pool, scores

def timed(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out

def bench_select():
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pool, scores = make_pool(root)
        print(f"pool: 1,000,000 prompts in 10,000 tasks, {pool.stat().st_size / 1e6:.0f} MB JSONL")
        raw_s, _ = timed(lambda: pj.read_json(pool, read_options=pj.ReadOptions(block_size=1 << 24)).to_pandas())
        read_s, _ = timed(lambda: load_pool(str(pool)))
        cfg = SelectConfig(pool=str(pool), budget="5%", strategy="weighted-task-diversity", scores=str(scores),
                           seed=0, out=str(root / "sel"))

        def full():
            rows, alloc = select(cfg)
            write_selection(cfg.out, rows, alloc, cfg)
            return rows

        select_s, rows = timed(full)
        assert len(rows) == 50_000
        print(f"parse the JSONL alone (pyarrow -> pandas, no checks): {raw_s:.2f} s")
        print(f"read the pool (taskdiv load_pool: parse + validate):  {read_s:.2f} s")
        print(f"taskdiv select, end to end (read + scores + select + write): {select_s:.2f} s")
        ratio = (select_s - read_s) / read_s
        print(f"selection adds {ratio:.2f}x the read time (target <= 1.0x): {'PASS' if ratio <= 1 else 'FAIL'}; "
              f"{(select_s - raw_s) / raw_s:.2f}x the bare parse")

def bench_k_center():
    rng = np.random.default_rng(0)
    small = rng.normal(size=(300, 384)).astype(np.float32)
    same = np.array_equal(k_center(small, 40, seed=1), k_center_naive(small, 40, seed=1))
    print(f"k-center picks the same points as the naive reference on 300 x 384, k=40: {same}")
    X = rng.normal(size=(100_000, 384)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    for k in (1_000, 5_000):
        t = time.perf_counter()
        picks = k_center(X, k, seed=0)
        dt = time.perf_counter() - t
        assert len(np.unique(picks)) == k
        print(f"k-center on 100,000 x 384, k={k}: {dt:.1f} s (target < 60 s): {'PASS' if dt < 60 else 'FAIL'}")

if __name__ == "__main__":
    bench_select()
    bench_k_center()
