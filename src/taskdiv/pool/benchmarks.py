"""Benchmark collections as pool sources, read from local files: MMLU, BIG-Bench Hard, the eval gauntlet.

    taskdiv pool info bench:many                      # the many-task preset: 127 tasks
    taskdiv pool info 'bench:demo?split=test'         # the demo slice's held-out part
    taskdiv pool info mmlu:anatomy,virology           # one collection, some of its tasks
    taskdiv pool info 'gauntlet:?max_pool=50'         # a whole collection (the empty name)

The files are found under the local data root (`--data-dir`, $TASKDIV_DATA, else
`../shared/data` beside the repository; `paths.data_root`), or the spec's `data=DIR`:
    mmlu/      MMLU in its original CSV layout (dev/, val/, test/: question, A-D, answer letter)
    bbh/       BIG-Bench Hard, TASK.json ({"examples": [{"input", "target"}]})
    gauntlet/  the llm-foundry eval gauntlet, CATEGORY/TASK.jsonl (line formats in its README)
Without local files, MMLU and BBH are read from their hub copies (`cais/mmlu`,
`lukaemon/bbh`; needs `taskdiv[hf]` and the network); the gauntlet has no hub copy (it is
llm-foundry's `scripts/eval/local_data`).

Every item becomes one pool row: `id` (TASK:N), `task` (COLLECTION/NAME), `prompt`,
`response` (the answer a model is taught), `targets` (accepted answers) and, for items
scored by likelihood, `choices`:
    mmlu/SUBJECT      dev + val rows ("question\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:",
                      choices A-D). The test rows are never in a pool: the `mmlu` evaluation
                      suite (lm-evaluation-harness) scores them, with dev as its 5 shots.
    bbh/TASK          "Q: input\\nA:"; the options an item lists, (A) to (R), are its choices, a
                      two-answer task (Yes/No, True/False, valid/invalid) has both; otherwise
                      generative (exact match). A fifth of each task (SUITE_SHARE, chosen by a
                      fixed hash, whatever the split options) is the `bbh` suite's held-out
                      part and never in a pool or a test part.
    gauntlet/NAME     multiple choice {query, choices, gold}; schema {context_options,
                      continuation, gold} (winograd, winogrande: the completed sentences are
                      the choices); language modelling {context, continuation}; question
                      answering {context, answer, aliases?} (aliases are accepted answers);
                      jeopardy {context, continuation, category}: one task per category,
                      `gauntlet/jeopardy/CATEGORY`. Prompts are as the files hold them;
                      a bare question gets "\\nAnswer:".
No source ever yields an item that the `mmlu` or `bbh` suite scores (`suite_overlap`): MMLU
repeats some test questions in other subjects' dev and val rows, and those rows are left out
too, as are the BBH suite's items wherever they appear.

Left out of the gauntlet: the code tasks (programming/: human_eval and its variants are
judged by running the generated program against unit tests, which neither exact match nor
likelihood can stand in for), and files that repeat another's items (lambada_openai_small,
jeopardy_small, triviaqa_small, gsm8k_prepended_8shot, math_simple_soln,
math_complex_soln, simple_arithmetic_withspaces). Three gauntlet tasks are BIG-bench tasks
that BBH also holds (bigbench_dyck_languages, bigbench_logical_deduction,
bigbench_movie_recommendation): they can be loaded by name, and `suite_overlap` finds their
items that the `bbh` suite scores, so no preset holds them.

Splits: the rule of `taskdiv.pool.splits`, the same for every source (split, test, pool_frac,
max_pool, seed), plus `data=DIR`.
"""
from __future__ import annotations

import json
import logging
import re
from functools import lru_cache
from pathlib import Path

import pandas as pd

from ..common.errors import DataError, TaskdivError, unknown_name
from ..common.inputs import iter_jsonl, read_csv
from ..common.paths import data_root
from .splits import SplitOptions, hash_int, split_key, split_tasks

log = logging.getLogger(__name__)

COLLECTIONS = ("mmlu", "bbh", "gauntlet")
HUB = {"mmlu": "cais/mmlu", "bbh": "lukaemon/bbh"}
SUITE_SHARE = 0.2  # of each BBH task: the `bbh` evaluation suite's held-out part
LETTERS = "ABCD"
GAUNTLET_LEFT_OUT = {
    "lambada_openai_small", "jeopardy_small", "triviaqa_small", "gsm8k_prepended_8shot", "math_simple_soln",
    "math_complex_soln", "simple_arithmetic_withspaces"}
BBH_IN_GAUNTLET = ("bigbench_dyck_languages", "bigbench_logical_deduction", "bigbench_movie_recommendation")
# The gauntlet's five categories of the preset (safety/, three bias and PII probes, is left to users).
MANY_CATEGORIES = ("commonsense_reasoning", "language_understanding", "reading_comprehension",
                   "symbolic_problem_solving", "world_knowledge")
BINARY = ({"Yes", "No"}, {"yes", "no"}, {"True", "False"}, {"valid", "invalid"})
OPTION = re.compile(r"^\(([A-R])\)", re.M)

# The demo slice of `many`: 30 tasks with short prompts (median under 400 characters), ten
# per collection, of every kind (yes/no, multiple choice, generative) and from easy to
# near chance for a small model, so that confidence varies; sizes from 16 to 20,000.
DEMO = [
    "mmlu/high_school_geography", "mmlu/us_foreign_policy", "mmlu/marketing", "mmlu/nutrition",
    "mmlu/sociology", "mmlu/world_religions", "mmlu/global_facts", "mmlu/human_aging", "mmlu/management",
    "mmlu/high_school_psychology",
    "bbh/boolean_expressions", "bbh/sports_understanding", "bbh/object_counting", "bbh/multistep_arithmetic_two",
    "bbh/word_sorting", "bbh/navigate", "bbh/hyperbaton", "bbh/date_understanding", "bbh/web_of_lies",
    "bbh/ruin_names",
    "gauntlet/bigbench_strategy_qa", "gauntlet/copa", "gauntlet/openbook_qa", "gauntlet/arc_easy",
    "gauntlet/bigbench_qa_wikidata", "gauntlet/simple_arithmetic_nospaces", "gauntlet/triviaqa_sm_sub",
    "gauntlet/jeopardy/science", "gauntlet/bigbench_misconceptions", "gauntlet/bigbench_operators",
]


# ----------------------------------------------------------------------------- where the files are


def collection_dir(collection: str, data: str | None = None) -> Path | None:
    """The collection's folder: `data=DIR` (DIR/COLLECTION, or DIR itself when it is one), else
    under the local data root; None when there is none (MMLU and BBH then come from the hub)."""
    if data:
        base = Path(data)
        for path in (base / collection, base):
            if path.is_dir() and _looks_like(collection, path):
                return path
        raise TaskdivError(f"data={data}: no {collection}/ collection there (nor is it one)")
    return data_root(collection)


def _looks_like(collection: str, path: Path) -> bool:
    if collection == "mmlu":
        return (path / "test").is_dir()
    if collection == "bbh":
        return any(path.glob("*.json"))
    return any(path.glob("*/*.jsonl"))


# ----------------------------------------------------------------------------- the catalogue


@lru_cache(maxsize=8)
def catalogue(collection: str, root: Path | None) -> dict[str, tuple]:
    """Task name -> how to read it, for one collection (root None: the hub copy)."""
    if collection == "mmlu":
        if root is None:
            return {f"mmlu/{s}": ("hub", s) for s in _hub_configs("mmlu")}
        subjects = sorted(p.name[:-len("_test.csv")] for p in (root / "test").glob("*_test.csv"))
        if not subjects:
            raise TaskdivError(f"{root}: not in the MMLU layout (test/SUBJECT_test.csv, dev/, val/)")
        return {f"mmlu/{s}": ("files", root, s) for s in subjects}
    if collection == "bbh":
        if root is None:
            return {f"bbh/{t}": ("hub", t) for t in _hub_configs("bbh")}
        return {f"bbh/{p.stem}": ("files", p) for p in sorted(root.glob("*.json"))}
    if root is None:
        raise TaskdivError("gauntlet: no local copy: point --data-dir (or $TASKDIV_DATA) at a folder holding "
                           "gauntlet/, the files of llm-foundry's scripts/eval/local_data (it has no hub copy)")
    out: dict[str, tuple] = {}
    for path in sorted(root.glob("*/*.jsonl")):
        name = path.stem
        if path.parent.name == "programming" or name in GAUNTLET_LEFT_OUT:
            continue
        if name == "jeopardy_all":
            for category in sorted({str(rec.get("category", "")) for _, rec in iter_jsonl(path)}):
                out[f"gauntlet/jeopardy/{category}"] = ("files", path, category)
        else:
            out[f"gauntlet/{name}"] = ("files", path, None)
    return out


def _hub_configs(collection: str) -> list[str]:
    from ..common.packages import require

    datasets = require("datasets", "hf")
    name = HUB[collection]
    try:
        return [c for c in datasets.get_dataset_config_names(name) if c not in ("all", "auxiliary_train")]
    except Exception as e:  # noqa: BLE001 - the hub client raises many kinds; all mean "not reachable"
        raise TaskdivError(f"no local copy of {collection} and the hub copy {name} cannot be read ({e}); "
                           f"point --data-dir (or $TASKDIV_DATA) at a folder holding it") from None


def presets(data: str | None = None) -> dict[str, list[str]]:
    """`many`: every task of the three collections but the gauntlet's safety probes and its
    three BBH tasks; `demo`: its 30-task slice; `mmlu`, `bbh`, `gauntlet`: one collection."""
    tasks = {c: list(catalogue(c, collection_dir(c, data))) for c in COLLECTIONS
             if c != "gauntlet" or collection_dir(c, data) is not None}
    gauntlet = catalogue("gauntlet", collection_dir("gauntlet", data)) if "gauntlet" in tasks else {}
    many_gauntlet = [t for t, how in gauntlet.items() if how[1].parent.name in MANY_CATEGORIES
                     and t.split("/")[1] not in BBH_IN_GAUNTLET]
    return {"many": tasks["mmlu"] + tasks["bbh"] + many_gauntlet, "demo": list(DEMO), **tasks}


def resolve(names: list[str], data: str | None = None, collection: str | None = None) -> list[str]:
    """Task names (COLLECTION/NAME) of presets, collections and tasks; `collection`: the
    source (`mmlu:`...) whose short names these are."""
    known_presets = presets(data) if collection is None else {}
    out: list[str] = []
    for name in names:
        if name == collection:  # `gauntlet:` alone: the whole collection
            out.extend(catalogue(name, collection_dir(name, data)))
            continue
        full = f"{collection}/{name}" if collection and not name.startswith(collection + "/") else name
        if name in known_presets:
            out.extend(known_presets[name])
            continue
        coll = full.split("/", 1)[0]
        if coll not in COLLECTIONS:
            raise unknown_name("benchmark task or preset", name, list(known_presets) + list(COLLECTIONS))
        tasks = catalogue(coll, collection_dir(coll, data))
        if full in tasks:
            out.append(full)
        elif any(t.startswith(full + "/") for t in tasks):  # gauntlet/jeopardy: its categories
            out.extend(t for t in tasks if t.startswith(full + "/"))
        else:
            raise unknown_name(f"{coll} task", name, [t.removeprefix(coll + "/") if collection else t for t in tasks])
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------- reading one task


def read_task(name: str, data: str | None = None) -> pd.DataFrame:
    """All items of one task as pool rows with their split key (`_key`), without the split."""
    coll = name.split("/", 1)[0]
    return _read_task(name, coll, collection_dir(coll, data), data).copy()


@lru_cache(maxsize=256)  # a process that loads a pool and its test part reads each file once
def _read_task(name: str, coll: str, root: Path | None, data: str | None) -> pd.DataFrame:
    how = catalogue(coll, root)[name]
    rows = _READERS[coll](name, *how)
    frame = pd.DataFrame(rows, columns=["id", "prompt", "task", "response", "choices", "targets", "_key"])
    if coll == "bbh":  # the suite's part never reaches a pool or a test part
        suite = bbh_suite(list(zip(frame["prompt"], frame["response"])))
        frame = frame[[i not in suite for i in range(len(frame))]]
    # Nor does any item the suites score in another form: MMLU repeats test questions in other
    # subjects' dev and val rows, and the gauntlet holds BIG-bench items that BBH holds too.
    overlap = suite_overlap(frame, data)
    if len(overlap):
        log.debug("%s: %d item(s) left out, the mmlu/bbh suites score them (%s, ...)", name, len(overlap),
                  overlap["suite_item"].iloc[0])
        frame = frame[~frame.index.isin(overlap.index)]
    frame.attrs["left_out"] = len(overlap)
    return frame


def _row(task: str, n, prompt: str, response: str, targets: list[str], choices: list[str] | None = None) -> dict:
    prompt = prompt.rstrip(" ")
    return {"id": f"{task}:{n}", "prompt": prompt, "task": task, "response": response, "choices": choices,
            "targets": targets, "_key": split_key(prompt, response)}


def read_mmlu_csv(path: Path) -> pd.DataFrame:
    """An MMLU CSV (question, A, B, C, D, answer letter; no header), every row checked:
    columns question, choices (the four options), answer (the letter). The `mmlu` suite
    (`taskdiv.evaluation.harness`) and the `mmlu:` source read through it."""
    raw = read_csv(path, header=None, dtype=str, keep_default_na=False)
    if raw.shape[1] != 6:
        raise DataError(f"expected 6 columns (question, A, B, C, D, answer), found {raw.shape[1]}", file=path,
                        row=1)
    answers = raw[5].str.strip()
    bad = ~answers.isin(list(LETTERS))
    if bad.any():
        i = int(bad.to_numpy().argmax())
        raise DataError(f"answer must be one of A, B, C, D, not {raw.iloc[i, 5]!r}", file=path, row=i + 1,
                        field="answer")
    return pd.DataFrame({"question": raw[0], "choices": raw[[1, 2, 3, 4]].values.tolist(), "answer": answers})


def read_bbh_examples(path: Path) -> list[dict]:
    """A BBH TASK.json's examples ({input, target}, both strings), every one checked. The `bbh`
    suite (`taskdiv.evaluation.harness`) and the `bbh:` source read through it."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"not valid JSON ({e})", file=path) from None
    examples = spec.get("examples") if isinstance(spec, dict) else None
    if not isinstance(examples, list):
        raise DataError('expected {"examples": [{"input": ..., "target": ...}, ...]}', file=path)
    _check_bbh_examples(examples, path)
    return [{"input": e["input"], "target": e["target"]} for e in examples]


def _check_bbh_examples(examples: list, where) -> None:
    for i, ex in enumerate(examples, 1):
        for key in ("input", "target"):
            if not isinstance(ex, dict) or not isinstance(ex.get(key), str):
                raise DataError(f"missing string field {key!r}", file=where, row=i, field=key)


def mmlu_prompt(question: str, options: list[str]) -> str:
    """The lm-evaluation-harness MMLU template (without its subject line)."""
    return question.strip() + "".join(f"\n{letter}. {o}" for letter, o in zip(LETTERS, options)) + "\nAnswer:"


def _read_mmlu(task: str, how: str, *args) -> list[dict]:
    rows = []
    if how == "hub":
        from ..common.packages import require

        datasets = require("datasets", "hf")
        for split, tag in (("dev", "dev"), ("validation", "val")):
            for i, rec in enumerate(datasets.load_dataset(HUB["mmlu"], args[0], split=split)):
                letter = LETTERS[int(rec["answer"])]
                rows.append(_row(task, f"{tag}-{i:05d}", mmlu_prompt(rec["question"], rec["choices"]), letter,
                                 [letter], list(LETTERS)))
        return rows
    root, subject = args
    for split in ("dev", "val"):
        path = root / split / f"{subject}_{split}.csv"
        if not path.exists():
            continue
        frame = read_mmlu_csv(path)
        for i, (question, options, letter) in enumerate(zip(frame["question"], frame["choices"], frame["answer"])):
            rows.append(_row(task, f"{split}-{i:05d}", mmlu_prompt(question, list(options)), letter, [letter],
                             list(LETTERS)))
    return rows


def _read_bbh(task: str, how: str, arg) -> list[dict]:
    if how == "hub":
        from ..common.packages import require

        examples = [dict(r) for r in require("datasets", "hf").load_dataset(HUB["bbh"], arg, split="test")]
        _check_bbh_examples(examples, HUB["bbh"])
    else:
        examples = read_bbh_examples(arg)
    answers = {ex["target"] for ex in examples}
    binary = next((sorted(b) for b in BINARY if answers <= b), None)
    rows = []
    for i, ex in enumerate(examples):
        options = [f"({letter})" for letter in OPTION.findall(ex["input"])]
        choices = binary or (options if ex["target"] in options else None)
        rows.append(_row(task, f"{i:05d}", f"Q: {ex['input']}\nA:", ex["target"], [ex["target"]], choices))
    return rows


def _read_gauntlet(task: str, how: str, path: Path, category: str | None) -> list[dict]:
    rows = []
    for lineno, rec in iter_jsonl(path):
        if category is not None and str(rec.get("category", "")) != category:
            continue
        try:
            rows.append(_gauntlet_row(task, lineno, rec))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            field = e.args[0] if isinstance(e, KeyError) else None
            raise DataError(f"not a gauntlet line of a known format ({type(e).__name__}: {e})", file=path,
                            line=lineno, field=field) from None
    return rows


def _gauntlet_row(task: str, lineno: int, rec: dict) -> dict:
    n = f"{lineno:05d}"
    if "query" in rec:  # multiple choice
        choices = [str(c) for c in rec["choices"]]
        answer = choices[int(rec["gold"])]
        return _row(task, n, str(rec["query"]), answer, [answer], choices)
    if "context_options" in rec:  # schema: the option completes the sentence
        rest = str(rec["continuation"]).strip()
        choices = [f"{str(c).strip()} {rest}" for c in rec["context_options"]]
        answer = choices[int(rec["gold"])]
        prompt = "Which sentence makes more sense?\n" + "".join(f"- {c}\n" for c in choices) + "Answer:"
        return _row(task, n, prompt, answer, [answer], choices)
    context = str(rec["context"])
    if "answer" in rec:  # question answering
        answer = str(rec["answer"]).strip()
        aliases = [str(a).strip() for a in rec.get("aliases") or []]
        prompt = context if context.rstrip().endswith((":", "=")) else f"{context.rstrip()}\nAnswer:"
        return _row(task, n, prompt, answer, list(dict.fromkeys([answer, *[a for a in aliases if a]])))
    answer = str(rec["continuation"]).strip()  # language modelling, jeopardy
    if not answer:
        raise ValueError("empty continuation")
    prompt = f"{context.rstrip()}\nAnswer:" if "category" in rec else context
    return _row(task, n, prompt, answer, [answer])


_READERS = {"mmlu": _read_mmlu, "bbh": _read_bbh, "gauntlet": _read_gauntlet}


def bbh_suite(items: list[tuple[str, str]]) -> set[int]:
    """Indices of a BBH task's items that the `bbh` suite holds out: the first SUITE_SHARE of
    them in an order fixed by a hash of the item (no seed: every pool and every evaluation
    agree on it)."""
    order = sorted(range(len(items)), key=lambda i: (hash_int("bbh-suite:" + split_key(*items[i])), i))
    return set(order[:round(SUITE_SHARE * len(items))])


def bbh_suite_examples(examples: list[dict]) -> list[dict]:
    """The examples ({input, target}) of one BBH task that the `bbh` suite scores by default."""
    keep = bbh_suite([(f"Q: {ex['input']}\nA:".rstrip(" "), ex["target"]) for ex in examples])
    return [ex for i, ex in enumerate(examples) if i in keep]


# ----------------------------------------------------------------------------- loading


def load(names: list[str], options: SplitOptions | None = None, *, data: str | None = None,
         collection: str | None = None, where: str = "bench") -> pd.DataFrame:
    """Pool rows of the given presets/collections/tasks for one split (see the module docstring)."""
    options = options or SplitOptions()
    frames = {}
    left_out = 0
    for name in resolve(names, data, collection):
        frame = read_task(name, data)
        left_out += frame.attrs.get("left_out", 0)
        if len(frame) == 0:
            log.warning("%s has no usable items; skipped", name)
            continue
        frames[name] = frame
    if left_out:
        log.info("%s: %d item(s) left out of %d task(s): the mmlu/bbh evaluation suites score them (-vv lists "
                 "them by task)", where, left_out, len(frames))
    return split_tasks(frames, options, where=where)


def load_spec(kind: str, name: str, opts: dict[str, str]) -> pd.DataFrame:
    """`bench:NAMES?opts`, or `mmlu:` / `bbh:` / `gauntlet:` with short task names (empty: all)."""
    where = f"{kind}:{name}"
    options = SplitOptions.from_spec(where, opts, extra=("data",))
    names = [t for t in name.split(",") if t]
    if kind == "bench":
        return load(names or ["many"], options, data=opts.get("data"), where=where)
    return load(names or [kind], options, data=opts.get("data"), collection=kind, where=where)


# ----------------------------------------------------------------------------- the suites stay out of pools


def _normal(line: str) -> str:
    line = re.sub(r"\s+", " ", line).strip().lower()
    return re.sub(r"^(q|question|input):\s*", "", line)


def _fingerprint(text: str) -> str | None:
    """An item's longest line, normalised: what another format of the item still shows."""
    line = max((_normal(x) for x in text.splitlines()), key=len, default="")
    return line if len(line) >= 25 else None


@lru_cache(maxsize=2)
def _suite_fingerprints(data: str | None) -> dict[str, str]:
    """Fingerprint -> the suite item it marks: MMLU's test questions and the BBH suite's part.
    A fingerprint that two items share marks neither (a task's shared instruction line)."""
    seen: dict[str, str] = {}
    shared: set[str] = set()

    def add(text: str, label: str) -> None:
        fp = _fingerprint(text)
        if fp is None:
            return
        if fp in seen and seen[fp] != label:
            shared.add(fp)
        seen[fp] = label

    mmlu = _optional_dir("mmlu", data)
    if mmlu is not None:
        for path in sorted((mmlu / "test").glob("*_test.csv")):
            raw = read_csv(path, header=None, dtype=str, keep_default_na=False)
            for i, q in enumerate(raw[0]):
                add(q, f"MMLU test {path.name} row {i + 1}")
    bbh = _optional_dir("bbh", data)
    if bbh is not None:
        for task, how in catalogue("bbh", bbh).items():
            for i, ex in enumerate(bbh_suite_examples(read_bbh_examples(how[1]))):
                add(ex["input"], f"BBH suite {task} item {i}")
    return {fp: label for fp, label in seen.items() if fp not in shared}


def _optional_dir(collection: str, data: str | None) -> Path | None:
    """The collection's folder, or None where this data directory has none (nothing to check)."""
    try:
        return collection_dir(collection, data)
    except TaskdivError:
        return None


def suite_overlap(frame: pd.DataFrame, data: str | None = None) -> pd.DataFrame:
    """The rows of a pool whose prompt shows an item the `mmlu` or `bbh` suite scores (by a
    line equal, after normalising space, case and a Q:/Question:/Input: label, to the item's
    longest line), with the item in `suite_item`. Empty for every preset."""
    index = _suite_fingerprints(data)
    hits = []
    for i, prompt in enumerate(frame["prompt"]):
        for line in prompt.splitlines():
            label = index.get(_normal(line))
            if label is not None:
                hits.append((i, label))
                break
    out = frame.iloc[[i for i, _ in hits]].copy()
    out["suite_item"] = [label for _, label in hits]
    return out
