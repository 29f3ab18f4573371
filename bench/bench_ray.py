"""Benchmark of the Ray engine and of the scorer against batched `generate`.

    python bench/bench_ray.py [--n 256] [--model smollm2-135m-instruct] [--max-new-tokens 16]

On the same N benchmark prompts (a seeded sample of the bench:demo slice), float32, batch 16:
1. `--engine local` (model loaded beforehand; generation time only).
2. Hugging Face `generate`, batched the same way (the local engine's batches: same
   prompts, same left padding), `output_logits=True`, mean_prob from the raw logits:
   the fair baseline for the local engine (bench_scoring.py has the one-at-a-time loop).
3. `--engine ray` on a local Ray cluster of this machine's cores, 2 workers of 1 CPU,
   shards of 2 batches.
   Reported: the time to start the cluster, the actors' model load, and the whole Ray
   stage (actor start-up included) against the local engine (target <= 1.3x), also
   without the actors' start-up.
The machine is shared: ratios are measured in one run, one side after the other.
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
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from taskdiv.common.config import build  # noqa: E402
from taskdiv.common.writers import write_jsonl  # noqa: E402
from taskdiv.engines import local as generation  # noqa: E402
from taskdiv.engines import models
from taskdiv.pool.load import load_pool  # noqa: E402
from taskdiv.scoring import commands as scoring  # noqa: E402
from taskdiv.scoring.cache import prompt_sha  # noqa: E402

POOL = "bench:demo?max_pool=50"


def hf_generate_batched(model, tok, batches, eos, max_new_tokens):
    """mean_prob per prompt from `generate(output_logits=True)` on left-padded batches."""
    import torch

    out = {}
    for shas, ids in batches:
        input_ids, mask = models.left_pad(ids, tok.pad_token_id)
        with torch.inference_mode():
            res = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, output_logits=True, return_dict_in_generate=True,
                                 pad_token_id=tok.pad_token_id)
        new = res.sequences[:, input_ids.shape[1]:]
        logits = torch.stack(res.logits, 1).float()  # (batch, steps, vocab)
        probs = torch.softmax(logits, -1).gather(2, new[:, :logits.shape[1], None])[..., 0]
        for r, sha in enumerate(shas):
            toks = new[r].tolist()
            stop = next((i + 1 for i, t in enumerate(toks) if t in eos), len(toks))  # EOS counts
            out[sha] = float(probs[r, :stop].mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    frame = load_pool(POOL).frame.sample(n=args.n, random_state=0).reset_index(drop=True)
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    pool = work / "pool.jsonl"
    write_jsonl(pool, frame[["id", "prompt", "task"]].to_dict(orient="records"))
    ref = models.resolve(args.model)
    common = {"pool": str(pool), "model": args.model, "dtype": "float32", "max_new_tokens": args.max_new_tokens,
              "batch_size": 16}
    print(f"{args.n} prompts of {POOL} (seeded sample), {args.model}, float32, batch 16, "
          f"{args.max_new_tokens} new tokens, {os.cpu_count()} cores", flush=True)

    model, tok = generation.load_model(ref, "float32")  # loading is not timed
    local = scoring.score(build(scoring.ScoreConfig, {**common, "out": str(work / "local")}), loaded=(model, tok))
    t_local = local.attrs["generation_seconds"]
    print(f"  local engine:            {t_local:7.1f} s ({args.n / t_local:.2f} prompts/s)", flush=True)

    # The local engine's own batches, for generate.
    chat = models.choose_chat(ref, tok, None)
    from transformers import AutoConfig

    context = getattr(AutoConfig.from_pretrained(ref.path), "max_position_embeddings", None) or 2048
    scorer = generation.Scorer(scoring.ScoreConfig(**common, out="unused"), ref, tok, chat,
                               context - args.max_new_tokens, cache=None)
    prompts = {prompt_sha(p): p for p in frame["prompt"]}
    order, encoded = scorer.plan(prompts)
    batches = [(order[i:i + 16], [encoded[s][0] for s in order[i:i + 16]]) for i in range(0, len(order), 16)]
    t = time.perf_counter()
    hf = hf_generate_batched(model, tok, batches, scorer.eos_ids(model), args.max_new_tokens)
    t_hf = time.perf_counter() - t
    print(f"  HF generate, batched:    {t_hf:7.1f} s ({args.n / t_hf:.2f} prompts/s)", flush=True)
    ours = dict(zip(frame["prompt"].map(prompt_sha), local.set_index("id").loc[frame["id"], "mean_prob"]))
    diff = max(abs(ours[s] - hf[s]) for s in hf)

    t = time.perf_counter()
    from taskdiv.engines import ray as distributed

    distributed.connect(None, num_cpus=os.cpu_count())
    t_connect = time.perf_counter() - t
    ray_scores = scoring.score(build(scoring.ScoreConfig, {**common, "out": str(work / "ray"), "engine": "ray",
                                                           "workers": 2, "cpus_per_worker": 1,
                                                           "batches_per_shard": 2}))
    t_ray = ray_scores.attrs["generation_seconds"]
    load = max(ray_scores.attrs["engine"]["load_seconds"] or [0.0])
    print(f"  ray engine (2 x 1 CPU):  {t_ray:7.1f} s ({args.n / t_ray:.2f} prompts/s), of which the actors' "
          f"start-up (model load) {load:.1f} s; cluster start {t_connect:.1f} s", flush=True)
    same = np.abs(ray_scores.set_index("id").loc[local["id"], "confidence"].to_numpy()
                  - local["confidence"].to_numpy()).max()
    print(f"  local engine / HF generate batched: {t_hf / t_local:.2f}x the throughput; mean_prob max |diff| "
          f"{diff:.1e}")
    print(f"  ray / local time: {t_ray / t_local:.2f}x with actor start-up, {(t_ray - load) / t_local:.2f}x "
          f"without (target <= 1.3x); start-up: cluster {t_connect:.1f} s + model load {load:.1f} s; "
          f"confidence ray vs local max |diff| {same:.1e}")


if __name__ == "__main__":
    main()
