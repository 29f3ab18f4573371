"""Training and evaluation throughput, bf16 against float32, for both embedded models; and
training with the LM head on response positions only against TRL's head on every position.

    python bench/bench_training.py            # or `make bench`
    python bench/bench_training.py --quick    # fewer examples, for a smoke run

Each measurement runs in its own subprocess so that its peak memory (VmHWM) is its
own; bf16 and float32 runs alternate so that load from other work on the machine hits
both alike. Training: LoRA (the defaults of `taskdiv train`) on the pool part of the
twelve BBH tasks (bench_training.TASKS), one epoch; tokens/s counts prompt + response tokens. Evaluation:
`taskdiv evaluate --suite heldout` on their test part (multiple choice, prefix-shared
scoring), items/s. Prints the ratios bf16/float32 measured side by side. Then, in bf16,
training's CPU loss (taskdiv.training._sft_trainer: logits of the response positions only)
against TRL's fused head, which on a CPU projects every position through the vocabulary:
the time and peak-memory ratios, alternating the two as above.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TASKDIV_NO_PROGRESS", "1")
MODELS = ("smollm2-135m-instruct", "gemma-3-270m")


# Twelve BBH tasks with multiple-choice answers, as the notes' twelve BIG-bench tasks were.
TASKS = ("sports_understanding,navigate,hyperbaton,formal_fallacies,causal_judgement,web_of_lies,snarks,"
         "movie_recommendation,date_understanding,ruin_names,disambiguation_qa,temporal_sequences")


def one(kind: str, model: str, dtype: str, data: str) -> dict:
    """A single measurement (runs in the child process, so the peak memory is its own)."""
    from taskdiv import training
    from taskdiv.evaluation.commands import EvalConfig, evaluate
    from taskdiv.training import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        if kind in ("train", "train-every-position"):
            training.COMPACT_HEAD = kind == "train"
            run = train(TrainConfig(data=data, model=model, out=f"{tmp}/run", epochs=1, dtype=dtype))
            m = json.loads((run / "train_metrics.json").read_text())
            out = {"tokens_per_second": m["tokens_per_second"], "seconds_per_example_epoch":
                   m["seconds_per_example_epoch"], "examples": m["examples"]}
        else:
            r = evaluate(EvalConfig(model=model, heldout=data, out=f"{tmp}/eval", dtype=dtype, batch_size=16))
            seconds, items = r["seconds"], r["macro"]["n"]  # scoring only, model loading apart
            out = {"items_per_second": items / seconds, "seconds_per_item": seconds / items, "items": items,
                   "accuracy": r["macro"]["accuracy"]}
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory. On Linux VmHWM of /proc/self/status: ru_maxrss
    survives exec, so a child spawned by a big parent (`make bench` runs the selection
    benchmark's 1M-prompt pool in the same process first) would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(kind, model, dtype, data) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--one", kind, model, dtype, data],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} {model} {dtype} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_data(tmp: str, n_train: int, n_eval: int) -> dict[str, str]:
    """The pool part (training) and test part (evaluation) of twelve BBH tasks as JSONL files."""
    from taskdiv.common.writers import write_jsonl
    from taskdiv.pool.load import load_pool

    train = load_pool(f"bbh:{TASKS}?max_pool={max(1, n_train // 12)}").frame
    test = load_pool(f"bbh:{TASKS}?split=test").frame.groupby("task").head(max(1, n_eval // 12))
    write_jsonl(f"{tmp}/train.jsonl", train[["id", "task", "prompt", "response"]].to_dict("records"))
    write_jsonl(f"{tmp}/test.jsonl", test.to_dict("records"))
    return {"train": f"{tmp}/train.jsonl", "eval": f"{tmp}/test.jsonl"}


def main(quick: bool) -> None:
    n_train, n_eval, reps = (24, 24, 1) if quick else (96, 120, 2)
    import torch

    tmp = tempfile.mkdtemp(prefix="bench-training-")
    files = write_data(tmp, n_train, n_eval)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; {n_train} training examples x 1 epoch, "
          f"{n_eval} evaluation items; best of {reps} run(s) each, bf16 and float32 alternating")
    for model in MODELS:
        for kind, key in (("train", "tokens_per_second"), ("eval", "items_per_second")):
            best: dict[str, dict] = {}
            for _ in range(reps):
                for dtype in ("bfloat16", "float32"):
                    r = measure(kind, model, dtype, files[kind])
                    if dtype not in best or r[key] > best[dtype][key]:
                        best[dtype] = r
            bf, fp = best["bfloat16"], best["float32"]
            if kind == "train":
                print(f"{model:22s} train  bf16 {bf[key]:7.0f} tok/s "
                      f"({bf['seconds_per_example_epoch']:.3f} s/example-epoch, "
                      f"peak {bf['peak_rss_mb']:.0f} MB)  float32 {fp[key]:7.0f} tok/s "
                      f"({fp['seconds_per_example_epoch']:.3f} s/example-epoch, peak {fp['peak_rss_mb']:.0f} MB)  "
                      f"bf16/float32 = {bf[key] / fp[key]:.2f}x", flush=True)
            else:
                print(f"{model:22s} eval   bf16 {bf[key]:7.2f} items/s ({bf['seconds_per_item']:.3f} s/item, "
                      f"peak {bf['peak_rss_mb']:.0f} MB)  float32 {fp[key]:7.2f} items/s "
                      f"({fp['seconds_per_item']:.3f} s/item, peak {fp['peak_rss_mb']:.0f} MB)  "
                      f"bf16/float32 = {bf[key] / fp[key]:.2f}x  (accuracy bf16 {bf['accuracy']:.3f}, "
                      f"float32 {fp['accuracy']:.3f})", flush=True)
    key = "seconds_per_example_epoch"
    for model in MODELS:
        best = {}
        for _ in range(reps):
            for kind in ("train", "train-every-position"):
                r = measure(kind, model, "bfloat16", files["train"])
                if kind not in best or r[key] < best[kind][key]:
                    best[kind] = r
        ours, trl = best["train"], best["train-every-position"]
        print(f"{model:22s} LM head  response positions {ours[key]:.3f} s/example-epoch (peak "
              f"{ours['peak_rss_mb']:.0f} MB)  every position (TRL on a CPU) {trl[key]:.3f} s/example-epoch (peak "
              f"{trl['peak_rss_mb']:.0f} MB)  time {ours[key] / trl[key]:.2f}x, peak memory "
              f"{ours['peak_rss_mb'] / trl['peak_rss_mb']:.2f}x", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])))
    else:
        main(quick="--quick" in sys.argv)
