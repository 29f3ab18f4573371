"""`taskdiv evaluate`: held-out accuracy per task, and MMLU/BBH through lm-evaluation-harness.

    taskdiv evaluate runs/ft --suite heldout --heldout 'bench:demo?split=test' --out runs/ft/eval
    taskdiv evaluate smollm2-135m-instruct --suite mmlu --limit 20 --out runs/base/mmlu
    taskdiv evaluate runs/ft --suite bbh --bbh-variant zeroshot --out runs/ft/bbh
    taskdiv evaluate runs/ft --suite judge --judge-url http://127.0.0.1:8000 --judge-model M --out runs/ft/judge

RUN_OR_MODEL is a `taskdiv train` run directory (its adapter is applied and merged) or
anything `--model` accepts. Prompts are formatted by `models.encode_prompt`, as in
training and scoring.

Suite `heldout` (the held-out part of each task of the pool, e.g. `bench:many?split=test`):
  multiple choice  every choice is scored as the reply training teaches,
                   `models.encode_response(prompt, choice)` (for base models " choice" + EOS,
                   for chat models the assistant turn with its end-of-turn tokens), after
                   the prompt's tokens; the prediction is the choice with the highest mean
                   log-probability per token (log-likelihood / number of choice tokens).
                   The prompt is run once per item and its KV cache shared by the choices.
  generative       greedy generation, stopped at EOS or at the first newline (and after
                   the longest target's length + 4 tokens, capped by --max-new-tokens);
                   correct when it equals a target after lower-casing and collapsing
                   whitespace.
Suites `mmlu` and `bbh`: see `taskdiv.harness`. Suite `judge` (an LLM judge's win rate
against reference answers, AlpacaEval by default): see `taskdiv.judge`.

Writes (atomically) to --out:
    results.json   per-task accuracy with 95% bootstrap intervals, macro and micro average,
                   timings (model loading apart; on a resumed run only the resumed part),
                   the resolved config; a rerun with the same config reuses it
    per_task.csv   task, n, accuracy, ci_low, ci_high (last row: macro)
    items.jsonl    heldout: id, task, kind, prediction, correct (for paired comparisons)
The heldout suite appends finished batches to .items.partial.jsonl, so an interrupted
evaluation resumes where it stopped.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..common.atomic import output_set
from ..common.config import to_dict
from ..common.errors import TaskdivError
from ..common.inputs import file_sha256, iter_jsonl
from ..common.outputs import check_output_dir
from ..common.writers import dump_jsonl, dump_table, dumps_json
from ..engines.models import EMBEDDED
from .heldout import format_table, load_heldout, load_model, run_heldout, summarise

log = logging.getLogger(__name__)


SUITES = ("heldout", "mmlu", "bbh", "judge")


OUTPUTS = ("items.jsonl", "per_task.csv", "results.json")


@dataclass
class EvalConfig:
    model: str | None = field(default=None, metadata={
        "positional": True, "required": True,
        "help": f"A `taskdiv train` run directory, or a model ({', '.join(EMBEDDED)}, a path, a hub id)."})
    suite: str = field(default="heldout", metadata={"choices": list(SUITES), "help": "What to evaluate."})
    out: str | None = field(default=None, metadata={"required": True, "help": "Output directory."})
    heldout: str = field(default="bench:demo?split=test", metadata={
        "help": "heldout: a pool whose rows carry targets (and choices for multiple choice); default: the "
                "held-out part of the demo slice of the many-task preset."})
    limit: int | None = field(default=None, metadata={
        "help": "At most N items per task (heldout, BBH) or subject (MMLU), for quick runs."})
    tasks: list[str] | None = field(default=None, metadata={
        "help": "mmlu/bbh: only these subjects / tasks (names as in the data directory)."})
    mmlu_dir: str | None = field(default=None, metadata={
        "help": "MMLU in the original CSV layout (dev/, test/ with SUBJECT_dev.csv ...); "
                "default: ../shared/data/mmlu when present."})
    bbh_dir: str | None = field(default=None, metadata={
        "help": "BBH's original JSON files (TASK.json, cot-prompts/TASK.txt); default: ../shared/data/bbh."})
    bbh_items: str = field(default="heldout", metadata={
        "choices": ["heldout", "all"], "help": "bbh: the fifth of each task that no pool holds (heldout: what "
                                               "`bbh:` and `bench:` pools leave out), or every item (all: the "
                                               "published BBH, which overlaps pools built from bbh:)."})
    bbh_variant: str = field(default="both", metadata={
        "choices": ["both", "cot", "zeroshot"], "help": "bbh: 3-shot chain of thought, zero-shot, or both."})
    harness_tasks: list[str] | None = field(default=None, metadata={
        "help": "Online: lm-evaluation-harness task names from its hub configs (e.g. mmlu, bbh_zeroshot), "
                "instead of the local files."})
    max_gen_toks: int | None = field(default=None, metadata={
        "help": "mmlu/bbh: cap on generated tokens (the harness's task default otherwise: 1024 for BBH CoT)."})
    max_new_tokens: int = field(default=32, metadata={"help": "heldout: cap on generated tokens."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per forward pass."})
    dtype: str = field(default="auto", metadata={
        "choices": ["auto", "bfloat16", "float32"], "help": "auto = bfloat16 where supported, else float32."})
    chat_template: bool | None = field(default=None, metadata={
        "help": "Use the chat template (default: as the run was trained / yes for instruct models)."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap."})
    n_boot: int = field(default=2000, metadata={"help": "Bootstrap resamples for the 95% intervals."})
    engine: str = field(default="local", metadata={
        "choices": ["local", "vllm"], "help": "heldout: transformers in this process (local), or a vLLM server "
                                              "(its own, or --vllm-url; see taskdiv.vllm_engine)."})
    vllm_url: str | None = field(default=None, metadata={
        "help": "--engine vllm: an OpenAI-compatible server serving the model, instead of starting one."})
    vllm_model: str | None = field(default=None, metadata={
        "help": "--vllm-url: the served model name (default: the server's only model)."})
    vllm_python: str | None = field(default=None, metadata={
        "help": "--engine vllm: the Python of a venv with vLLM (default: $TASKDIV_VLLM_PYTHON, else .venv-vllm)."})
    judge_url: str | None = field(default=None, metadata={
        "help": "judge: an OpenAI-compatible server (http://HOST:PORT, or https://api.openai.com); the key comes from "
                "$TASKDIV_JUDGE_API_KEY, else $OPENAI_API_KEY."})
    judge_model: str | None = field(default=None, metadata={"help": "judge: the judge's model name on --judge-url."})
    judge_config: str = field(default="weighted_alpaca_eval_gpt4_turbo", metadata={
        "help": "judge: an alpaca_eval annotator config (its prompt, decoding and parser; a name in the package's "
                "evaluators_configs, or a path to a configs.yaml)."})
    judge_order: str = field(default="random", metadata={
        "choices": ["random", "both"], "help": "judge: alpaca_eval's seeded random order of the two outputs (one "
                                               "verdict each), or both orders averaged (two)."})
    judge_concurrency: int = field(default=4, metadata={"help": "judge: requests in flight at once."})
    judge_timeout: float = field(default=120.0, metadata={"help": "judge: seconds per request before a retry."})
    judge_retries: int = field(default=6, metadata={
        "help": "judge: retries of a request (exponential backoff) on 429, 5xx, timeouts and lost connections."})
    judge_data: str | None = field(default=None, metadata={
        "help": "judge: the instructions and reference answers: AlpacaEval's reference_outputs.json under the data "
                "root by default, a JSON file in that format, or a pool whose response is the reference."})
    judge_cache: str | None = field(default=None, metadata={
        "help": "judge: the verdict cache (SQLite; default $TASKDIV_CACHE/judge/verdicts.sqlite)."})
    lc_data: str | None = field(default=None, metadata={
        "help": "judge: a folder holding alpaca_eval's df_gamed.csv and instruction_difficulty.csv, for the "
                "length_controlled_v1 win rate offline (default: the data root's alpaca_eval/, else the hub)."})
    max_answer_tokens: int = field(default=1024, metadata={"help": "judge: cap on each answer's tokens."})


def _config_key(cfg: EvalConfig, fingerprint: str, chat: bool, dtype: str) -> dict:
    """Everything that changes the answers: options, weights, and the held-out file's content."""
    keep = to_dict(cfg, exclude=("out", "batch_size", *VLLM_OPTIONS, *JUDGE_OPTIONS))
    data = file_sha256(cfg.heldout) if cfg.suite == "heldout" else None
    key = {**keep, "fingerprint": fingerprint, "chat": chat, "dtype_resolved": dtype, "heldout_sha256": data}
    if cfg.engine != "local":  # only then: the keys of earlier results stay as they were
        from ..engines.vllm import engine_key

        key["engine"] = engine_key(cfg)
    if cfg.suite in ("mmlu", "bbh") and not cfg.harness_tasks:  # the local files, wherever they were found
        from .harness import default_data_dir

        given = cfg.mmlu_dir if cfg.suite == "mmlu" else cfg.bbh_dir
        root = Path(given) if given else default_data_dir(cfg.suite)
        key["data_sha256"] = file_sha256(str(root)) if root is not None and root.is_dir() else None
    return key


def check_options(cfg: EvalConfig) -> None:
    """The options alone make sense (the model and the suite's data are checked by `evaluate`)."""
    if cfg.model is None or cfg.out is None:
        raise TaskdivError("evaluate needs RUN_OR_MODEL and --out")
    if cfg.suite not in SUITES:
        raise TaskdivError(f"--suite must be one of {', '.join(SUITES)}")
    if (cfg.limit is not None and cfg.limit < 1) or cfg.batch_size < 1 or cfg.n_boot < 1 or cfg.max_new_tokens < 1 \
            or (cfg.max_gen_toks is not None and cfg.max_gen_toks < 1):
        raise TaskdivError("--limit, --batch-size, --n-boot, --max-new-tokens and --max-gen-toks must be positive")
    if cfg.engine == "vllm" and cfg.suite not in ("heldout", "judge"):
        raise TaskdivError(f"--engine vllm evaluates the heldout and judge suites; --suite {cfg.suite} runs through "
                           f"lm-evaluation-harness with --engine local")
    judge_given = [f"--{n.replace('_', '-')}" for n in ("judge_url", "judge_model", "judge_data", "judge_cache",
                                                         "lc_data") if getattr(cfg, n)]
    if cfg.suite != "judge" and judge_given:
        raise TaskdivError(f"{', '.join(judge_given)} apply to --suite judge only")
    if cfg.suite == "judge":
        if not cfg.judge_url or not cfg.judge_model:
            raise TaskdivError("--suite judge needs --judge-url (an OpenAI-compatible server) and --judge-model")
        if cfg.judge_concurrency < 1 or cfg.judge_retries < 0 or cfg.judge_timeout <= 0 or cfg.max_answer_tokens < 1:
            raise TaskdivError("--judge-concurrency and --max-answer-tokens must be positive, --judge-timeout above 0, "
                               "--judge-retries 0 or more")
    given = [f"--{n.replace('_', '-')}" for n in VLLM_OPTIONS[1:] if getattr(cfg, n)]
    if cfg.engine != "vllm" and given:
        raise TaskdivError(f"{', '.join(given)} apply to --engine vllm only")


def evaluate(cfg: EvalConfig) -> dict:
    """Run one suite; writes results.json, per_task.csv (and items.jsonl) into cfg.out."""
    from ..engines import models

    check_options(cfg)
    if cfg.suite == "judge":
        from . import judge

        return judge.run(cfg)
    out = Path(cfg.out)
    check_output_dir(out, OUTPUTS, inputs=[cfg.heldout if cfg.suite == "heldout" else None])
    ref = models.resolve(cfg.model)
    dtype = models.dtype_name(cfg.dtype)
    tok = models.load_tokenizer(ref)
    chat = models.choose_chat(ref, tok, cfg.chat_template)
    key = _config_key(cfg, models.fingerprint(ref), chat, dtype)
    # What the answers depend on: the seed and resamples of the bootstrap change only the intervals.
    item_key = {k: v for k, v in key.items() if k not in SUMMARY_OPTIONS}
    results_path = out / "results.json"
    if results_path.exists():  # checked first: preparing the inputs costs time (and rewrites MMLU's files)
        old = json.loads(results_path.read_text(encoding="utf-8"))
        if old.get("config") == json.loads(json.dumps(key)):
            log.info("%s: already evaluated with this config; reusing it", results_path)
            return old
        old_items = {k: v for k, v in (old.get("config") or {}).items() if k not in SUMMARY_OPTIONS}
        if old_items == json.loads(json.dumps(item_key)) and (out / "items.jsonl").exists():
            log.info("%s: the same answers with other bootstrap options; only the intervals are recomputed",
                     results_path)
            items = pd.DataFrame([rec for _, rec in iter_jsonl(out / "items.jsonl")])
            return _write_results(cfg, out, items, key, chat, dtype, old.get("load_seconds", 0.0),
                                  old.get("seconds", 0.0), old.get("harness"), items_kept=True)
    # Validate the inputs before loading the model.
    if cfg.suite == "heldout":
        frame = load_heldout(cfg.heldout, cfg.limit)
    else:
        from . import harness

        prepared = harness.prepare(cfg, out)  # validates and converts the local files

    start = time.perf_counter()
    if cfg.engine == "vllm":
        from ..engines.vllm import VLLMEvaluator

        model = VLLMEvaluator(cfg, ref, tok, log_path=out / "vllm-server.log")
    else:
        model, tok = load_model(ref, dtype, tok)
    loaded = time.perf_counter()
    try:
        if cfg.suite == "heldout":
            partial = out / ".items.partial.jsonl"
            items = run_heldout(model, tok, frame, chat, cfg, partial,
                                json.dumps(item_key, sort_keys=True, default=str))
            raw = None
        else:
            items, raw = harness.run(model, tok, prepared, cfg, chat,
                                     json.dumps(item_key, sort_keys=True, default=str))
    finally:
        if hasattr(model, "conn"):  # --engine vllm: its own server
            model.close()
        del model
        models.free_memory()
    return _write_results(cfg, out, items, key, chat, dtype, loaded - start, time.perf_counter() - loaded, raw)


# The engine's options: in the config key only as its "engine" entry, and only under --engine vllm.
VLLM_OPTIONS = ("engine", "vllm_url", "vllm_model", "vllm_python")


# The judge suite's options: not in the other suites' keys (their earlier results stay valid).
JUDGE_OPTIONS = ("judge_url", "judge_model", "judge_config", "judge_order", "judge_concurrency", "judge_timeout",
                 "judge_retries", "judge_data", "judge_cache", "lc_data", "max_answer_tokens")


# Options that change only the summary's intervals, not any answer.
SUMMARY_OPTIONS = ("seed", "n_boot")


def _write_results(cfg: EvalConfig, out: Path, items: pd.DataFrame, key: dict, chat: bool, dtype: str,
                   load_seconds: float, seconds: float, raw, items_kept: bool = False) -> dict:
    """Summarise the items and write items.jsonl, per_task.csv and results.json as one unit.
    `items_kept`: items.jsonl already holds these items (only the intervals change); it is left as is."""
    table, macro = summarise(items, n_boot=cfg.n_boot, seed=cfg.seed)
    results = {"suite": cfg.suite, "model": cfg.model, "chat": chat, "dtype": dtype,
               "tasks": {r["task"]: {k: r[k] for k in ("n", "accuracy", "ci_low", "ci_high")}
                         for r in table.to_dict(orient="records")},
               "macro": macro, "load_seconds": round(load_seconds, 2), "seconds": round(seconds, 2),
               "seconds_per_item": round(seconds / max(1, len(items)), 4), "config": key}
    if cfg.suite != "heldout":
        results["harness"] = raw
    macro_row = pd.DataFrame([{"task": "macro", "n": macro["n"], "accuracy": macro["accuracy"],
                               "ci_low": macro["ci_low"], "ci_high": macro["ci_high"]}])
    # One unit, results.json (what a rerun reuses) last.
    names = OUTPUTS[1:] if items_kept else OUTPUTS
    with output_set(*(out / name for name in names)) as tmps:
        *items_tmp, table_tmp, results_tmp = tmps
        if items_tmp:
            dump_jsonl(items_tmp[0], items.to_dict(orient="records"))
        dump_table(table_tmp, pd.concat([table, macro_row], ignore_index=True), ".csv")
        results_tmp.write_text(dumps_json(results), encoding="utf-8")
    if cfg.suite == "heldout":
        (out / ".items.partial.jsonl").unlink(missing_ok=True)
    results["table"] = format_table(table, macro)
    return results


def run_evaluate(cfg: EvalConfig) -> None:
    results = evaluate(cfg)
    if cfg.suite == "judge":
        print(results.pop("table"))
        print(f"wrote {Path(cfg.out) / 'results.json'}, per_task.csv, answers.jsonl and verdicts.jsonl")
        return
    print(results.pop("table", None) or format_table(
        pd.DataFrame([{"task": t, **v} for t, v in results["tasks"].items()]), results["macro"]))
    print(f"{results['seconds']:.0f} s ({results['seconds_per_item']:.3f} s per item); "
          f"wrote {Path(cfg.out) / 'results.json'} and per_task.csv")
