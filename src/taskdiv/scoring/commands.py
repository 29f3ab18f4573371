"""`taskdiv score`: the base model's confidence on each prompt, and per task.

    taskdiv score bench:demo --per-task 16 --out runs/scores
    taskdiv select bench:demo --budget 1000 --scores runs/scores/scores.csv --out runs/sel

For each prompt the model generates greedily (up to --max-new-tokens, stopping at
EOS, which counts as a generated token); from the raw logits of every step we keep the
log-probability of the chosen token and the entropy of the next-token distribution,
and compute every metric of `taskdiv.metrics`. Prompts are formatted by
`models.encode_prompt` (raw text, or the chat template), truncated from the left when
longer than --max-prompt-tokens (the BOS token is kept), sorted by length and run in
left-padded batches with a KV cache; rows that reach EOS leave the batch.

Cache and resume: results go to OUT/cache.sqlite, keyed by (settings, prompt sha256),
where `settings` hashes the model's identity (a content hash of its weights and adapter,
`models.fingerprint`), dtype, max-new-tokens, chat template and prompt-length limit.
Each batch is one transaction, so a killed run loses at most the batch in flight; a
rerun reuses every stored row, and other settings never see them. Finished rounds are
also copied into the shared cache, $TASKDIV_CACHE/scores/cache.sqlite, which every
--out (and the Python API) reads first: scoring the same prompts with the same model and
settings into a new --out generates nothing (`taskdiv cache info|clear`;
TASKDIV_SHARED_SCORES=0 turns it off).

Engines: --engine local (this process) or --engine ray (Ray Data feeding scorer actors
that run the local engine's `generation.Scorer.generate` on shards of the same batches; see
`taskdiv.distributed` for its shard files and how they meet this cache), or --engine vllm
(the same prompts sent as token ids to a vLLM server, its own or --vllm-url; with
--engine ray --runner vllm, one per actor; see `taskdiv.vllm_engine`). vLLM rows carry
"engine": "vllm" in their settings, so they never mix with the local engine's.

Sampling: --per-task N scores a seeded sample of N prompts per task (all of a smaller
task). --target-ci W then scores more, round by round, in every task whose 95%
t-interval on the mean confidence (with the finite-population correction) is wider
than W (ci_high - ci_low), until it is narrow enough or the task is exhausted.

Writes OUT/scores.csv and OUT/scores.parquet (id, task, confidence, every metric,
generated, tokens, prompt_tokens, truncated), OUT/tasks.csv (task, available,
scored, confidence, sd, ci_low, ci_high) and OUT/config.yaml.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.atomic import output_set
from ..common.config import to_dict
from ..common.errors import TaskdivError
from ..common.outputs import check_inputs_kept
from ..common.writers import dump_table, dump_yaml
from ..engines import vllm as vllm_engine
from ..engines.local import Scorer
from ..engines.models import DEFAULT_MODEL, EMBEDDED
from ..engines.ray import RayOptions
from ..pool.container import Pool
from ..pool.fields import PoolOptions
from ..pool.load import load_pool
from ..pool.readers import EXCLUDE_HELP, exclude_name, excluded
from . import metrics as metrics_mod
from .cache import ScoreCache, prompt_sha, shared_cache

log = logging.getLogger(__name__)


# Bump when the way prompts become model inputs changes, so old cache rows are not reused.
FORMAT_VERSION = 1


# --target-ci: the fewest prompts a task gets per extra round (one round scores the
# extra prompts of every task that still needs them, together, in batches).
CI_MIN_STEP = 8


# What OUT holds: none of them may be the pool (`score OUT/scores.csv --out OUT`).
OUTPUTS = ("scores.csv", "scores.parquet", "tasks.csv", "config.yaml", "cache.sqlite")


@dataclass
class ScoreConfig(PoolOptions, RayOptions, vllm_engine.VLLMOptions):
    model: str = field(default=DEFAULT_MODEL, metadata={
        "help": f"Model: an embedded name ({', '.join(EMBEDDED)}), a local model directory, "
                "a .gguf file or a hub id."})
    chat_template: bool | None = field(default=None, metadata={
        "help": "Format prompts with the model's chat template (default: on for instruct models, "
                "off for base models)."})
    dtype: str = field(default="auto", metadata={
        "choices": ["auto", "float32", "bfloat16"],
        "help": "Weights and compute dtype; auto = bfloat16 where the hardware supports it, else float32."})
    max_new_tokens: int = field(default=32, metadata={
        "help": "Greedy tokens generated per prompt (EOS stops earlier)."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per batch (sorted by length, left padded)."})
    max_prompt_tokens: int | None = field(default=None, metadata={
        "help": "Longer prompts are truncated from the left (default: the model's context minus "
                "--max-new-tokens)."})
    metric: str = field(default="mean_prob", metadata={
        "choices": list(metrics_mod.METRICS),
        "help": "The metric written as `confidence` (mean_entropy is written as exp(-mean_entropy))."})
    exclude: str | None = field(default=None, metadata={
        "help": "Ids not to score: e.g. the prompts an earlier round annotated, when a model trained on them "
                "scores the rest (tasks.csv counts the rest). " + EXCLUDE_HELP})
    per_task: int | None = field(default=None, metadata={
        "help": "Score a seeded random sample of this many prompts per task (all of a smaller task)."})
    target_ci: float | None = field(default=None, metadata={
        "help": "Then keep scoring more prompts in tasks whose 95% interval on the mean confidence "
                "(ci_high - ci_low) is wider than this."})
    seed: int = field(default=0, metadata={"help": "Seed of the per-task samples."})
    out: str | None = field(default=None, metadata={"required": True, "help": "Output directory."})


def task_table(scores: pd.DataFrame, pool: Pool) -> pd.DataFrame:
    """Per task: available, scored, mean confidence, sd and its 95% interval.

    The interval is a t-interval on the mean with the finite-population correction
    sqrt((N - n) / (N - 1)): a fully scored task has no sampling error left. With one
    scored prompt of several the interval is unknown (NaN). Bounds are clipped to [0, 1].
    """
    from scipy import stats

    available = pool.task_sizes()
    grouped = scores.groupby("task")["confidence"]
    table = pd.DataFrame({"available": available,
                          "scored": grouped.size().reindex(available.index).fillna(0).astype(int),
                          "confidence": grouped.mean().reindex(available.index),
                          "sd": grouped.std(ddof=1).reindex(available.index)})
    n, big_n = table["scored"].to_numpy(float), table["available"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        fpc = np.sqrt(np.where(big_n > 1, (big_n - n) / (big_n - 1), 0.0))
        tq = stats.t.ppf(0.975, np.maximum(n - 1, 1))
        half = np.where(n >= big_n, 0.0, tq * table["sd"].to_numpy(float) / np.sqrt(n) * fpc)
    half = np.where(n == 0, np.nan, half)
    table["ci_low"] = np.clip(table["confidence"] - half, 0, 1)
    table["ci_high"] = np.clip(table["confidence"] + half, 0, 1)
    return table.rename_axis("task").reset_index()


def _next_sizes(table: pd.DataFrame, width: float) -> dict[str, int]:
    """--target-ci: the new sample size of each task whose interval is still too wide."""
    out = {}
    for row in table.itertuples(index=False):
        wide = not (row.ci_high - row.ci_low <= width)  # NaN (one prompt scored) counts as wide
        if not wide or row.scored >= row.available:
            continue
        k, big_n = int(row.scored), int(row.available)
        if np.isfinite(row.sd) and row.sd > 0:
            # Normal-approximation sample size for this width, with the finite-population correction.
            n0 = (2 * 1.96 * row.sd / width) ** 2
            need = math.ceil(n0 / (1 + (n0 - 1) / big_n))
        else:
            need = k + CI_MIN_STEP
        # At least one step, at most doubling per round: sd from few prompts is itself noisy.
        out[row.task] = min(big_n, max(k + CI_MIN_STEP, min(2 * k, need)))
    return out


def check_options(cfg: ScoreConfig) -> None:
    """Refuse bad options before any work (`experiment --dry-run` runs this too)."""
    for name in ("max_new_tokens", "batch_size", "per_task", "max_prompt_tokens"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise TaskdivError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if cfg.target_ci is not None and not 0 < cfg.target_ci <= 1:
        raise TaskdivError(f"--target-ci must be in (0, 1], got {cfg.target_ci}")
    metrics_mod.get(cfg.metric)
    from ..engines import ray as distributed

    distributed.check_options(cfg)
    vllm_engine.check_options(cfg)
    check_inputs_kept([Path(cfg.out) / name for name in OUTPUTS], [cfg.pool])


def _open_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise TaskdivError(f"{out}: cannot write to the output directory ({e.strerror or e})") from None


def _sample_orders(pool: Pool, seed: int) -> dict[str, np.ndarray]:
    """Per task, its row positions in a seeded random order (a task's own seed comes from
    its name, so adding or removing other tasks does not change its sample; the order is
    drawn over the task's ids sorted, so the order of the pool's rows does not either)."""
    orders, ranks = {}, pool.ranks()
    for task, positions in pool.frame.groupby("task", sort=True).indices.items():
        task_seed = int.from_bytes(hashlib.sha256(f"{seed}:{task}".encode()).digest()[:8], "little")
        by_id = positions[np.argsort(ranks[positions], kind="stable")]
        orders[task] = np.random.default_rng(task_seed).permutation(by_id)
    return orders


def score(cfg: ScoreConfig, *, loaded=None) -> pd.DataFrame:
    """Score the pool as configured, write the outputs, return the scores table.

    The table has one row per scored prompt, in pool order; `run_score` prints the
    summary. The task table is `task_table(scores, pool)` (also in OUT/tasks.csv).
    `loaded`: (model, tokenizer) of cfg.model in cfg.dtype from `generation.load_model`, for a caller
    that scores several times with one model; by default the model is loaded when there
    is something to generate and dropped when the call returns.
    """
    return _score(cfg, loaded)[0]


def _score(cfg: ScoreConfig, loaded=None, pool: Pool | None = None,
           exclude=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`score`, also returning the task table it wrote. `pool`: cfg.pool loaded already
    (the Python API's pool in memory); `exclude`: ids in place of cfg.exclude's file (its list)."""
    from ..engines import models

    check_options(cfg)
    pool = pool if pool is not None else load_pool(cfg.pool, cfg.field_map())
    if exclude is not None or cfg.exclude:
        pool = _without_excluded(pool, exclude if exclude is not None else cfg.exclude)
    ref = models.resolve(cfg.model)
    tokenizer = loaded[1] if loaded is not None else models.load_tokenizer(ref)
    chat = models.choose_chat(ref, tokenizer, cfg.chat_template)
    context = _context_length(cfg, ref)
    out = Path(cfg.out)
    _open_out(out)
    max_prompt = cfg.max_prompt_tokens or context - cfg.max_new_tokens
    settings = _settings(cfg, ref, chat, max_prompt)
    cache = ScoreCache(out / "cache.sqlite", settings)
    shared = shared_cache(settings)
    scorer = _make_scorer(cfg, ref, tokenizer, chat, max_prompt, cache, out, loaded)
    started = time.perf_counter()
    try:
        scores, table, reused, from_shared = _score_rounds(cfg, pool, scorer, cache, shared)
    finally:
        _close(cache, shared, scorer, ours=loaded is None)
    _write_outputs(out, scores, table, cfg, settings, ref.path, cache.key,
                   excluded=None if exclude is None else f"<a list of {len(exclude)} id(s)>")
    scores.attrs.update(reused=reused, from_shared=from_shared, computed=scorer.computed,
                        seconds=time.perf_counter() - started, generation_seconds=scorer.seconds,
                        available=len(pool.frame),
                        engine=dict(getattr(scorer, "stats", {}), engine=cfg.engine))
    log.info("scored %d of %d prompts: %d reused from the cache (%d of them from the shared cache), %d generated",
             len(scores), len(pool.frame), reused, from_shared, scorer.computed)
    return scores, table


def _without_excluded(pool: Pool, exclude) -> Pool:
    """The pool without the prompts --exclude names (an earlier selection, a store; `excluded`)."""
    keep = ~excluded(pool, exclude)
    log.info("%s: scoring the %d of %d prompts it does not name", exclude_name(exclude), int(keep.sum()), len(pool))
    return Pool(pool.frame[keep].reset_index(drop=True), pool.source)


def _context_length(cfg: ScoreConfig, ref) -> int:
    """The model's context, checked to hold a prompt and its generated tokens together."""
    from transformers import AutoConfig

    from ..engines import models

    context = models.context_length(AutoConfig.from_pretrained(ref.path))
    if cfg.max_new_tokens >= context or (cfg.max_prompt_tokens or 1) + cfg.max_new_tokens > context:
        raise TaskdivError(f"--max-new-tokens {cfg.max_new_tokens}"
                           + (f" and --max-prompt-tokens {cfg.max_prompt_tokens}" if cfg.max_prompt_tokens else "")
                           + f" do not fit the model's context of {context} tokens ({cfg.model}): a prompt and "
                             f"its generated tokens must fit together")
    return context


def _settings(cfg: ScoreConfig, ref, chat, max_prompt: int) -> dict:
    """What the cache keys scores by: the model's content hash, dtype, lengths, chat template, format, engine."""
    from ..engines import models

    settings = {"model": models.fingerprint(ref), "dtype": models.dtype_name(cfg.dtype),
                "max_new_tokens": cfg.max_new_tokens, "chat": chat, "max_prompt_tokens": max_prompt,
                "format": FORMAT_VERSION}
    if vllm_engine.uses_vllm(cfg):  # another engine, other numbers: rows of its own (the local key is unchanged)
        settings["engine"] = vllm_engine.engine_key(cfg)
    return settings


def _make_scorer(cfg: ScoreConfig, ref, tokenizer, chat, max_prompt: int, cache: ScoreCache, out: Path, loaded):
    """The engine's scorer: vLLM, Ray, or the local one (on the caller's `loaded` model when given)."""
    if cfg.engine == "vllm":
        return vllm_engine.VLLMScorer(cfg, ref, tokenizer, chat, max_prompt, cache, log_path=out / "vllm-server.log")
    if cfg.engine == "ray":
        from ..engines.ray import RayScorer

        return RayScorer(cfg, ref, tokenizer, chat, max_prompt, cache)
    return Scorer(cfg, ref, tokenizer, chat, max_prompt, cache, model=loaded[0] if loaded is not None else None)


def _score_rounds(cfg: ScoreConfig, pool: Pool, scorer, cache: ScoreCache,
                  shared: ScoreCache | None) -> tuple[pd.DataFrame, pd.DataFrame, int, int]:
    """Score the sample (--per-task), then, with --target-ci, more of every task still too wide,
    round by round. Rows already in `cache`, or in `shared` (copied over), are not generated again;
    new rows are copied into `shared`. Returns (scores, task table, prompts reused, of them from shared)."""
    frame = pool.frame
    shas = np.array([prompt_sha(p) for p in frame["prompt"]], dtype=object)
    stored = cache.stored()
    shared_stored = shared.stored() if shared is not None else set()
    from_shared = 0
    orders = _sample_orders(pool, cfg.seed)
    sizes = {t: len(o) if cfg.per_task is None else min(cfg.per_task, len(o)) for t, o in orders.items()}
    chosen = np.zeros(len(frame), dtype=bool)
    reused: set[str] = set()
    round_no = 0
    while True:
        new = np.concatenate([orders[t][:k] for t, k in sizes.items()])  # load_pool refuses an empty pool
        new = new[~chosen[new]]
        chosen[new] = True
        todo = {shas[i]: frame["prompt"].iat[i] for i in new}
        if shared is not None:  # what another --out (or a notebook) scored with these settings
            pulled = [s for s in todo if s not in stored and s in shared_stored]
            if pulled:
                from_shared += cache.copy_from(shared, pulled)
                stored |= set(pulled)
        reused |= {s for s in todo if s in stored}
        todo = {s: p for s, p in todo.items() if s not in stored}
        round_no += 1
        scorer.run(todo, "scoring" if round_no == 1 else f"scoring (round {round_no})")
        stored |= set(todo)
        if shared is not None and todo:
            shared.copy_from(cache, list(todo))
            shared_stored |= set(todo)
        scores = _scores_table(frame, shas, chosen, cache, cfg.metric)
        table = task_table(scores, pool)
        sizes = {} if cfg.target_ci is None else _next_sizes(table, cfg.target_ci)
        if not sizes:
            return scores, table, len(reused), from_shared
        scored = table.set_index("task")["scored"]
        log.info("--target-ci %g: %d task(s) still wider; scoring up to %d more prompt(s)", cfg.target_ci,
                 len(sizes), sum(k - scored[t] for t, k in sizes.items()))


def _close(cache: ScoreCache, shared: ScoreCache | None, scorer, *, ours: bool) -> None:
    """Close the caches and the vLLM engine's own server; drop the model when this call loaded it (`ours`)."""
    from ..engines import models

    cache.close()
    if shared is not None:
        shared.close()
    if hasattr(scorer, "close"):  # the vLLM engine's own server
        scorer.close()
    if ours and getattr(scorer, "model", None) is not None:  # ours: dropped, not kept
        scorer.model = None
        models.free_memory()


def _write_outputs(out: Path, scores: pd.DataFrame, table: pd.DataFrame, cfg: ScoreConfig, settings: dict,
                   model_path, settings_key: str, excluded: str | None = None) -> None:
    """scores.csv, scores.parquet, tasks.csv and config.yaml, replaced as one unit. `excluded`:
    how config.yaml names ids excluded in memory (the Python API's list)."""
    with output_set(*(out / name for name in OUTPUTS[:4])) as (csv_tmp, parquet_tmp, tasks_tmp, config_tmp):
        dump_table(csv_tmp, scores, ".csv")
        dump_table(parquet_tmp, scores, ".parquet")
        dump_table(tasks_tmp, table, ".csv")
        dump_yaml(config_tmp, {"command": "score", **to_dict(cfg), **({"exclude": excluded} if excluded else {}),
                               "resolved": {**settings, "model_path": model_path, "settings_key": settings_key}})


def _scores_table(frame: pd.DataFrame, shas: np.ndarray, chosen: np.ndarray, cache: ScoreCache,
                  metric: str) -> pd.DataFrame:
    rows = np.flatnonzero(chosen)
    stored = cache.read(set(shas[rows]))
    missing = set(shas[rows]) - set(stored.index)
    assert not missing, f"{len(missing)} chosen prompt(s) have no stored score"
    table = stored.loc[shas[rows]].reset_index(drop=True)
    table.insert(0, "id", frame["id"].to_numpy()[rows])
    table.insert(1, "task", frame["task"].to_numpy()[rows])
    table.insert(2, "confidence", metrics_mod.confidence(metric, table[metric].to_numpy()))
    return table


def format_tasks(table: pd.DataFrame, max_rows: int = 60) -> str:
    """The task table, least confident first."""
    shown = table.sort_values(["confidence", "task"]).head(max_rows)
    text = shown.to_string(index=False, float_format=lambda v: f"{v:.3f}")
    if len(table) > max_rows:
        text += f"\n... {len(table) - max_rows} more task(s) in tasks.csv"
    return text


def run_score(cfg: ScoreConfig) -> None:
    scores, table = _score(cfg)
    out = Path(cfg.out)
    a = scores.attrs
    print(format_tasks(table))
    rate = f" ({a['computed'] / a['generation_seconds']:.2f} prompts/s)" if a["computed"] else ""
    shared = f" ({a['from_shared']} from the shared cache, scored before into another --out)" \
        if a.get("from_shared") else ""
    print(f"scored {len(scores)} of {a['available']} prompt(s) in {len(table)} task(s): {a['reused']} reused from "
          f"the cache{shared}, {a['computed']} generated in {a['generation_seconds']:.1f} s{rate}; "
          f"{int(scores['truncated'].sum())} truncated from the left")
    label = metrics_mod.get(cfg.metric).confidence_label
    print(f"confidence = {cfg.metric}" + (f" as {label}" if label else "")
          + f"; wrote {out / 'scores.csv'}, {out / 'scores.parquet'}, {out / 'tasks.csv'}")
