"""MMLU and BBH through lm-evaluation-harness (`lm_eval` as a library), from local files.

    taskdiv evaluate RUN --suite mmlu --mmlu-dir ../shared/data/mmlu --limit 20 --out DIR
    taskdiv evaluate RUN --suite bbh --bbh-dir ../shared/data/bbh --bbh-variant both --out DIR
    taskdiv evaluate RUN --suite mmlu --harness-tasks mmlu --out DIR     # online: hub configs

No evaluation logic lives here: taskdiv converts the local files, writes task YAMLs
that `include` the harness's own task configs and point them at those files
(`dataset_path: json`), and runs `lm_eval.simple_evaluate` with an `HFLM` wrapped
around the model taskdiv already loaded. Everything lands in DIR/harness/:
    data/mmlu/SUBJECT_{dev,test}.jsonl   question, subject, choices, answer (0-3)
    data/bbh/TASK.jsonl                  input, target
    tasks/*.yaml                         one task per subject / BBH task and variant

MMLU: the original CSV layout (dev/SUBJECT_dev.csv, test/SUBJECT_test.csv; rows
question, A, B, C, D, answer letter, no header), the harness's `mmlu` default
template, 5-shot from dev (the first five, as the harness does). BBH: TASK.json files
(`{"examples": [{"input", "target"}]}`) with the 3-shot chain-of-thought prompts of
cot-prompts/TASK.txt (variant `cot`, the harness's `bbh_cot_fewshot` template, answer
taken after "the answer is") and zero-shot (variant `zeroshot`, the harness's
`bbh_zeroshot` configs and their flexible-extract answer filter).
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..common.errors import DataError, TaskdivError, unknown_name
from ..common.paths import data_root
from ..common.writers import write_jsonl, write_yaml
from ..pool.benchmarks import LETTERS, bbh_suite_examples, read_bbh_examples, read_mmlu_csv

log = logging.getLogger(__name__)

# The per-sample score that counts as "correct", by the filter the harness applied.
PRIMARY_FILTERS = ("get-answer", "flexible-extract", "none", "strict-match")
PRIMARY_METRICS = ("acc", "exact_match")
COT_HEAD = re.compile(r"^Q: (?P<input>.*?)\nA: Let's think step by step\.[ \n](?P<target>.*)$", re.S)


@dataclass
class Prepared:
    tasks: list[str]                      # harness task names
    include_dir: Path | None = None       # our generated task YAMLs (None: hub tasks)
    names: dict[str, str] = field(default_factory=dict)  # harness name -> name in our tables


def _lm_eval_tasks_dir() -> Path:
    from ..common.packages import require

    return Path(require("lm_eval", "eval").__file__).parent / "tasks"


def default_data_dir(kind: str) -> Path | None:
    """The collection's folder under the local data root (`paths.data_root`)."""
    return data_root(kind)


def _only(found: dict[str, Path], wanted: list[str] | None, kind: str) -> dict[str, Path]:
    """The entries of FOUND named in WANTED (all of them when WANTED is empty); an unknown name fails."""
    if not wanted:
        return found
    unknown = [w for w in wanted if w not in found]
    if unknown:
        raise unknown_name(kind, unknown[0], found)
    return {w: found[w] for w in wanted}


# ----------------------------------------------------------------------------- MMLU


def read_mmlu(root: Path, subjects: list[str] | None) -> dict[str, dict[str, pd.DataFrame]]:
    """{subject: {"dev": frame, "test": frame}} with every row checked."""
    if not root.is_dir():
        raise TaskdivError(f"{root}: no such MMLU directory")
    for split in ("dev", "test"):
        if not (root / split).is_dir():
            raise TaskdivError(f"{root}: not in the MMLU layout (expected {split}/ with SUBJECT_{split}.csv files)")
    found = {p.name[:-len("_test.csv")]: p for p in sorted((root / "test").glob("*_test.csv"))}
    if not found:
        raise TaskdivError(f"{root / 'test'}: no SUBJECT_test.csv files (the MMLU layout)")
    found = _only(found, subjects, "MMLU subject")
    out = {}
    for subject, test_path in found.items():
        dev_path = root / "dev" / f"{subject}_dev.csv"
        if not dev_path.exists():
            raise TaskdivError(f"{dev_path}: missing (5-shot examples for {subject})")
        out[subject] = {"dev": _read_mmlu_csv(dev_path, subject), "test": _read_mmlu_csv(test_path, subject)}
    return out


def _read_mmlu_csv(path: Path, subject: str) -> pd.DataFrame:
    frame = read_mmlu_csv(path)
    return pd.DataFrame({"question": frame["question"], "subject": subject, "choices": frame["choices"],
                         "answer": frame["answer"].map(LETTERS.index)})


def prepare_mmlu(root: Path, subjects: list[str] | None, out: Path) -> Prepared:
    data = read_mmlu(root, subjects)  # everything is validated before anything is written
    template = _lm_eval_tasks_dir() / "mmlu" / "default" / "_default_template_yaml"
    if not template.exists():
        raise TaskdivError(f"{template}: missing; this lm-eval version has no MMLU default template")
    prepared = Prepared([], out / "tasks")
    for subject, splits in data.items():
        files = {}
        for split, frame in splits.items():
            files[split] = str((out / "data" / "mmlu" / f"{subject}_{split}.jsonl").resolve())
            write_jsonl(files[split], frame.to_dict(orient="records"))
        name = f"taskdiv_mmlu_{subject}"
        write_yaml(out / "tasks" / f"{name}.yaml", {
            "include": str(template), "task": name, "task_alias": subject,
            "dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": files},
            "description": f"The following are multiple choice questions (with answers) about "
                           f"{subject.replace('_', ' ')}.\n\n",
            "num_fewshot": 5})
        prepared.tasks.append(name)
        prepared.names[name] = subject
    return prepared


# ----------------------------------------------------------------------------- BBH


def read_bbh(root: Path, tasks: list[str] | None, cot: bool) -> dict[str, dict]:
    """{task: {"examples": [...], "description": str, "samples": [...]}} with every file checked."""
    if not root.is_dir():
        raise TaskdivError(f"{root}: no such BBH directory")
    found = {p.stem: p for p in sorted(root.glob("*.json"))}
    if not found:
        raise TaskdivError(f"{root}: no TASK.json files (the BBH layout)")
    found = _only(found, tasks, "BBH task")
    out = {}
    for task, path in found.items():
        examples = read_bbh_examples(path)
        if not examples:  # a suite needs items; an empty task is no pool part either, but no error there
            raise DataError("expected {\"examples\": [{\"input\": ..., \"target\": ...}, ...]}", file=path)
        entry = {"examples": examples}
        if cot:
            entry.update(parse_cot_prompt(root / "cot-prompts" / f"{task}.txt"))
        out[task] = entry
    return out


def parse_cot_prompt(path: Path) -> dict:
    """The description and the few-shot (input, chain-of-thought target) pairs of a cot-prompts file."""
    if not path.exists():
        raise TaskdivError(f"{path}: missing (the 3-shot chain-of-thought prompt of this task)")
    text = path.read_text(encoding="utf-8")
    if "-----\n" in text:  # a canary line, then a dashed line, precede the prompt
        text = text.split("-----\n", 1)[1]
    head, *blocks = re.split(r"\n\n(?=Q: )", text.strip("\n"))
    if not blocks:
        raise DataError("expected a task description followed by 'Q: ...' / 'A: Let's think step by step.' "
                        "examples", file=path)
    samples = []
    for i, block in enumerate(blocks, 1):
        m = COT_HEAD.match(block)
        if not m:
            raise DataError(f"example {i} does not start with 'Q: ...\\nA: Let's think step by step.'", file=path)
        samples.append({"input": m["input"], "target": m["target"]})
    return {"description": head.strip() + "\n\n", "samples": samples}


def prepare_bbh(root: Path, tasks: list[str] | None, variant: str, out: Path, items: str = "heldout") -> Prepared:
    """`items`: heldout, the suite's fifth of each task that no pool of taskdiv's holds
    (`benchmarks.bbh_suite_examples`), or all, the published benchmark."""
    variants = ["cot", "zeroshot"] if variant == "both" else [variant]
    data = read_bbh(root, tasks, cot="cot" in variants)
    if items == "heldout":
        for entry in data.values():
            entry["examples"] = bbh_suite_examples(entry["examples"])
    lm_tasks = _lm_eval_tasks_dir() / "bbh"
    prepared = Prepared([], out / "tasks")
    for task, entry in data.items():
        path = str((out / "data" / "bbh" / f"{task}.jsonl").resolve())
        write_jsonl(path, entry["examples"])
        common = {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": {"test": path}}}
        for v in variants:
            name = f"taskdiv_bbh_{v}_{task}"
            if v == "cot":
                cfg = {"include": str(lm_tasks / "cot_fewshot" / "_cot_fewshot_template_yaml"),
                       "description": entry["description"],
                       "doc_to_text": "Q: {{input}}\nA: Let's think step by step.\n",
                       "fewshot_config": {"sampler": "first_n", "samples": entry["samples"]},
                       "num_fewshot": len(entry["samples"])}
            else:
                own = lm_tasks / "zeroshot" / f"{task}.yaml"  # keeps the task's answer-extraction filter
                cfg = {"include": str(own)} if own.exists() else {
                    "include": str(lm_tasks / "zeroshot" / "_zeroshot_template_yaml"),
                    "doc_to_text": "Q: {{input}}\nA:"}
            if not Path(cfg["include"]).exists():
                raise TaskdivError(f"{cfg['include']}: missing; this lm-eval version lacks the BBH configs")
            write_yaml(out / "tasks" / f"{name}.yaml", {**cfg, **common, "task": name, "task_alias": f"{task} ({v})"})
            prepared.tasks.append(name)
            prepared.names[name] = f"{task}:{v}"
    return prepared


# ----------------------------------------------------------------------------- running


def prepare(cfg, out: Path) -> Prepared:
    """Validate the local files and write data + task YAMLs under OUT/harness (or use hub tasks)."""
    from ..common.packages import require

    require("lm_eval", "eval")
    if cfg.harness_tasks:
        return Prepared(list(cfg.harness_tasks))
    where = out / "harness"
    if cfg.suite == "mmlu":
        root = Path(cfg.mmlu_dir) if cfg.mmlu_dir else default_data_dir("mmlu")
        if root is None:
            raise TaskdivError("no MMLU directory: pass --mmlu-dir (the original CSV layout), "
                               "or --harness-tasks mmlu to use the harness's hub dataset")
        return prepare_mmlu(root, cfg.tasks, where)
    root = Path(cfg.bbh_dir) if cfg.bbh_dir else default_data_dir("bbh")
    if root is None:
        raise TaskdivError("no BBH directory: pass --bbh-dir (TASK.json files and cot-prompts/), "
                           "or --harness-tasks bbh_zeroshot to use the harness's hub dataset")
    return prepare_bbh(root, cfg.tasks, cfg.bbh_variant, where, cfg.bbh_items)


def run(model, tok, prepared: Prepared, cfg, chat: bool, key: str) -> tuple[pd.DataFrame, dict]:
    """Per-sample correctness (id, task, prediction, correct) and the harness's own results.

    `key` identifies everything that changes the answers (weights, options); the harness's
    request cache, which makes an interrupted run resume, is kept per key because the
    harness itself keys it by the request text only.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    device = str(next(model.parameters()).device)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=cfg.batch_size, device=device)
    manager = TaskManager(include_path=str(prepared.include_dir), include_defaults=False) \
        if prepared.include_dir else TaskManager()
    cache = Path(cfg.out) / "harness" / ".cache" / hashlib.sha256(key.encode()).hexdigest()[:16]
    cache.parent.mkdir(parents=True, exist_ok=True)
    results = simple_evaluate(
        model=lm, tasks=prepared.tasks, task_manager=manager, limit=cfg.limit, log_samples=True,
        apply_chat_template=chat, fewshot_as_multiturn=chat, bootstrap_iters=0, use_cache=str(cache),
        gen_kwargs={"max_gen_toks": cfg.max_gen_toks} if cfg.max_gen_toks else None,
        random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
        fewshot_random_seed=cfg.seed)
    if results is None:
        raise TaskdivError("lm-evaluation-harness returned no results")
    rows = []
    for task, samples in results["samples"].items():
        filters = {s.get("filter", "none") for s in samples}
        chosen = next((f for f in PRIMARY_FILTERS if f in filters), sorted(filters)[0])
        for s in samples:
            if s.get("filter", "none") != chosen:
                continue
            metric = next((m for m in PRIMARY_METRICS if m in s), None)
            if metric is None:
                raise TaskdivError(f"{task}: no acc or exact_match per sample; cannot compute accuracy")
            rows.append({"id": f"{task}:{s['doc_id']}", "task": prepared.names.get(task, task),
                         "filter": chosen, "prediction": _prediction(s.get("filtered_resps")),
                         "correct": bool(s[metric] >= 0.5)})
    raw = {"results": results.get("results", {}), "n-samples": results.get("n-samples", {}),
           "versions": results.get("versions", {}), "lm_eval_version": _version()}
    return pd.DataFrame(rows, columns=["id", "task", "filter", "prediction", "correct"]), raw


def _prediction(resps) -> str:
    """The chosen option's index for log-likelihood tasks, the extracted answer for generation."""
    if isinstance(resps, list) and resps and all(isinstance(r, (list, tuple)) and len(r) == 2 for r in resps):
        return str(max(range(len(resps)), key=lambda i: resps[i][0]))
    if isinstance(resps, list) and len(resps) == 1:
        resps = resps[0]
    return str(resps)[:500]


def _version() -> str:
    from importlib import metadata

    return metadata.version("lm_eval")
