"""Issue 27, section 4: every reader returns valid data or raises a TaskdivError, whatever it is given.

One Hypothesis test per reader: pools in each format (JSONL, JSON, CSV, Parquet, a
save_to_disk directory), `--scores`, `--exclude`, `--config` YAML, experiment YAML, the
annotation exports (Label Studio, Argilla, JSONL), the selection they answer, the annotation
store, a run's result.json, and the CSV files `report` reads. Each draws both bytes (random, and valid
files cut short, with bytes changed, inserted or repeated) and structures (records whose
fields hold any JSON value, the troublemakers of the issue among them: a lone surrogate,
nesting past the bound, text in a number field, formulas, dates that are none). The
reader must return data that holds what it promises (text is text UTF-8 can write, ids
are unique, numbers in range) or raise TaskdivError; any other exception fails the test,
and so does an example over its time bound (`deadline`) or its memory bound (the peak of
what Python allocates while reading, by tracemalloc).

    pytest tests/test_fuzz.py --hypothesis-show-statistics   # examples per reader

The number of examples is bounded per test so that the file runs in well under a minute;
the summary line at the end of the module gives the examples run and the time taken.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import tracemalloc
import unittest.mock
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskdiv.common.errors import TaskdivError

MEMORY_BOUND = 64 << 20  # bytes Python may hold at once while reading an input of at most a few KB
# Time: each example within `deadline` (a few hundred ms is usual; an alias bomb took minutes), and a
# hang that never returns is stopped by pytest-timeout.
# TASKDIV_FUZZ_SCALE=N runs N times the examples, drawn afresh each time (a longer search by hand);
# by default the same examples every run, so that CI is repeatable.
SCALE = int(os.environ.get("TASKDIV_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=60 * SCALE, deadline=timedelta(seconds=10), derandomize=SCALE == 1, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
pytestmark = pytest.mark.timeout(300 * SCALE)
RUN: dict[str, list] = {}  # reader -> [examples, of them loaded, seconds]


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    # Imported before the first example, whose time would otherwise include them.
    import pyarrow.json  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import taskdiv.annotate.commands  # noqa: F401
    import taskdiv.experiments.runner  # noqa: F401
    import taskdiv.report.commands  # noqa: F401
    import taskdiv.selection.commands  # noqa: F401
    from taskdiv.common import redact

    start = time.perf_counter()
    secrets = set(redact._SECRETS)
    yield
    # Config options that hold user:secret@ are remembered and masked in every later message: the
    # drawn ones would mask words in the other test files' messages.
    redact._SECRETS.clear()
    redact._SECRETS.update(secrets)
    total = sum(n for n, _, _ in RUN.values())
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and total:
        detail = ", ".join(f"{name} {n} ({ok} loaded) in {t:.1f} s" for name, (n, ok, t) in sorted(RUN.items()))
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nfuzz: {total} examples over {len(RUN)} readers in "
                                f"{time.perf_counter() - start:.1f} s ({detail})")


def bounded(name: str, read, *, trace: bool = True):
    """`read()` within the memory bound: its value, or None when it raised a TaskdivError.
    `trace`: measure with tracemalloc (every allocation of Python and numpy; it slows pandas-heavy
    code fourfold); else by the growth of the process's peak resident memory."""
    import resource

    counts = RUN.setdefault(name, [0, 0, 0.0])
    counts[0] += 1
    start = time.perf_counter()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    if trace:
        tracemalloc.start()
    try:
        value = read()
        counts[1] += 1
        return value
    except TaskdivError as e:
        assert str(e).strip(), "an error says what is wrong"
        return None
    finally:
        if trace:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        else:
            peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10) - peak_before
        counts[2] += time.perf_counter() - start
        assert peak < MEMORY_BOUND, f"{name}: {peak / 2**20:.0f} MB held while reading"


@pytest.fixture(scope="module")
def scratch():
    path = Path(tempfile.mkdtemp(prefix="taskdiv-fuzz-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- what is drawn

# The texts of the issue and their kin, and any text at all (lone surrogates included).
TROUBLE = ["\ud800", "a\udfffb", "\udbff\udc00", "=1+2", "=cmd|' /C calc'!A0", "'=x", "", " ", "\t", "\x00",
           "\u2028", "\ufeff", "NaN", "null", "1e999", "-3", "2026-13-45", "not a date", "a,b", 'say "hi"',
           "line\nbreak", "\r\n", "[", "{", "\\", "é", "💥"]
TEXT = st.one_of(st.sampled_from(TROUBLE), st.text(max_size=8),
                 st.text(st.characters(categories=["Cs", "Ll"]), max_size=4))  # Cs: surrogates
NUMBER = st.one_of(st.integers(-3, 3), st.integers(-2**70, 2**70), st.floats(), st.sampled_from([0.5, 1.0, 7.5]))
SCALAR = st.one_of(st.none(), st.booleans(), NUMBER, TEXT)


class Deep:
    """A value nested `depth` levels ({"k": [{"k": ...}]}): written by hand, as json.dumps and
    yaml.safe_dump stop at Python's recursion limit (see `dumps`)."""

    def __init__(self, depth: int):
        self.depth = depth

    def text(self) -> str:
        opens = "".join("[" if i % 2 else '{"k": ' for i in range(self.depth))
        return opens + '"x"' + "".join("]" if i % 2 else "}" for i in reversed(range(self.depth)))


DEEP = st.sampled_from([3, 99, 100, 101, 150, 1000, 3000]).map(Deep)


def values(keys=st.sampled_from(["id", "prompt", "task", "response", "x", "text", "value", "0", ""])):
    """Any JSON value: scalars, lists and objects of them, and (one time in eight) nesting at and past
    the bound."""
    tree = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4),
                        max_leaves=12)
    return st.one_of(*[tree] * 7, DEEP)


PLAIN = st.text(min_size=1, max_size=10).filter(str.strip)  # valid text: no surrogates, not blank


@st.composite
def perturbed(draw, good):
    """A valid structure (drawn from `good`) with a few of its parts changed: a value replaced by any
    value, a key dropped or added, an element dropped. Most of it stays valid, so that the reader
    gets past its first check and what follows is tried too."""
    rate = draw(st.sampled_from([0, 4, 10, 30]))  # 1 in `rate` parts changed (0: none)

    def hit() -> bool:
        return rate > 0 and draw(st.integers(1, rate)) == 1

    def walk(value, top=False):
        if not top and hit():  # the whole stays what it was (a list of rows, an object)
            return draw(values())
        if isinstance(value, dict):
            out = {k: walk(v) for k, v in value.items() if not hit()}
            if hit():
                out[draw(st.sampled_from(["id", "x", "prompt", "data", "result", "value", "round", "status"]))] = \
                    draw(values())
            return out
        if isinstance(value, list):
            return [walk(v) for v in value if not hit()]
        return value

    return walk(draw(good), top=True)


def rows_of(row, min_size=1, max_size=4):
    """Lists of rows drawn by `row(i)`, the i-th row's own strategy (its id, say)."""
    return st.integers(min_size, max_size).flatmap(lambda n: st.tuples(*(row(i) for i in range(n))).map(list))


def pool_row(i: int):
    return st.fixed_dictionaries({"id": st.just(f"r{i}"), "prompt": PLAIN, "task": st.sampled_from(["t", "u", "v w"])},
                                 optional={"response": PLAIN, "choices": st.lists(PLAIN, max_size=3)})


POOL_ROWS = perturbed(rows_of(pool_row))


def _placeholders(value, deep: list):
    if isinstance(value, Deep):
        deep.append(value)
        return f"@@deep{len(deep) - 1}@@"
    if isinstance(value, dict):
        return {k: _placeholders(v, deep) for k, v in value.items()}
    if isinstance(value, list):
        return [_placeholders(v, deep) for v in value]
    return value


def _serialise(value, dump) -> str:
    """`dump` of `value` with each Deep value written out in its place (JSON is YAML too)."""
    deep: list[Deep] = []
    text = dump(_placeholders(value, deep))
    for i, d in enumerate(deep):
        for quoted in (f'"@@deep{i}@@"', f"'@@deep{i}@@'", f"@@deep{i}@@"):
            text = text.replace(quoted, d.text())
    return text


def dumps(value) -> str:
    """JSON text of `value`; lone surrogates become \\ud800 escapes, as a hostile file holds them."""
    return _serialise(value, json.dumps)


@st.composite
def mutated(draw, seeds: list[bytes]):
    """Random bytes, or a valid file as it is or changed a few times: cut short, a byte changed, bytes
    inserted, a piece repeated."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=200))
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3]))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["cut", "set", "insert", "repeat"]))
        if op == "cut":
            del data[at:]
        elif op == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.one_of(st.binary(min_size=1, max_size=8),
                                         st.sampled_from([b"\n", b",", b'"', b"[", b"\\ud800", b"\xff", b"\x00"])))
        elif op == "repeat":
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
    return bytes(data)

def jsonl_inputs(seed: bytes, row):
    """A JSONL file's text: a valid line mutated, or drawn rows perturbed, one JSON object a line."""
    return st.one_of(mutated([seed]), perturbed(rows_of(row)).map(lambda rows: "".join(dumps(r) + "\n" for r in rows)))



def write(path: Path, data) -> Path:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------- what valid data is


def is_text(value) -> bool:
    if not isinstance(value, str):
        return False
    value.encode("utf-8")  # a lone surrogate raises: no writer could write it
    return True


def check_pool(pool, scratch: Path) -> None:
    """A pool holds what `data` promises, and every writer can write it."""
    from taskdiv.common.writers import dump_jsonl, dump_table

    frame = pool.frame
    assert list(frame.columns[:2]) == ["id", "prompt"]
    assert all(is_text(i) for i in frame["id"]) and frame["id"].is_unique
    assert all(is_text(p) and p.strip() for p in frame["prompt"])
    if "task" in frame.columns:
        assert all(is_text(t) and t.strip() == t and t for t in frame["task"])
    if "response" in frame.columns:
        assert all(r is None or is_text(r) for r in frame["response"])
    pool.task_sizes(), pool.ranks(), pool.task_codes()
    dump_jsonl(scratch / "written.jsonl", frame)
    dump_table(scratch / "written.csv", frame[[c for c in ("id", "prompt", "task") if c in frame.columns]])


def load_pool(path: Path, scratch: Path):
    from taskdiv.pool.load import load_pool

    pool = load_pool(str(path))
    check_pool(pool, scratch)
    return pool


# ----------------------------------------------------------------------------- pools

GOOD_ROWS = [{"id": "a1", "prompt": "Q one?", "task": "t", "response": "A."},
             {"id": "a2", "prompt": "Q two?", "task": "u", "response": "B.", "choices": ["x", "y"]}]
GOOD_JSONL = "".join(json.dumps(r) + "\n" for r in GOOD_ROWS).encode()


@FUZZ
@given(st.one_of(mutated([GOOD_JSONL, b'{"id":"\\ud800","prompt":"q","task":"t"}\n']),
                 POOL_ROWS.map(lambda rows: "".join(dumps(r) + "\n" for r in rows))))
def test_pool_jsonl(scratch, content):
    bounded("pool.jsonl", lambda: load_pool(write(scratch / "pool.jsonl", content), scratch))


@FUZZ
@given(st.one_of(mutated([json.dumps(GOOD_ROWS).encode(), json.dumps({"rows": GOOD_ROWS}).encode()]),
                 POOL_ROWS.map(dumps), perturbed(st.fixed_dictionaries({"rows": rows_of(pool_row)})).map(dumps),
                 values().map(dumps)))
def test_pool_json(scratch, content):
    bounded("pool.json", lambda: load_pool(write(scratch / "pool.json", content), scratch))


def csv_text(rows: list[list[str]]) -> str:
    import csv
    import io

    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


CSV_CELL = st.one_of(st.sampled_from(["a1", "t", "Q?", "", "id", "prompt"]), TEXT.filter(lambda t: "\x00" not in t))


def columns_of(rows: list) -> dict:
    """Rows (objects, or anything a perturbation made of one) as columns, a cell per row (None where
    a row lacks the field)."""
    rows = [r if isinstance(r, dict) else {"x": r} for r in rows]
    names = list(dict.fromkeys(k for r in rows for k in r))
    return {k: [r.get(k) for r in rows] for k in names}


def table_csv(rows: list, extra: list[list] = ()) -> str:
    """`rows` as CSV with a header, each cell its text (a list or object as Python writes it), and
    `extra` rows of cells as they are (wider or narrower than the header)."""
    columns = columns_of(rows)
    cells = [["" if v is None else v if isinstance(v, str) else dumps(v) for v in values]
             for values in columns.values()]
    return csv_text([list(columns), *map(list, zip(*cells)), *extra])


@FUZZ
@given(st.one_of(mutated([b"id,task,prompt,response\na1,t,Q one?,A.\na2,u,\"Q, two?\",B.\n"]),
                 st.tuples(POOL_ROWS, st.lists(st.lists(CSV_CELL, max_size=6), max_size=1))
                 .map(lambda t: table_csv(*t))))
def test_pool_csv(scratch, content):
    bounded("pool.csv", lambda: load_pool(write(scratch / "pool.csv", content), scratch))


def parquet_bytes(columns: dict) -> bytes:
    """The columns as Parquet: as Arrow infers their types, or as text where it cannot (mixed
    values); a text Arrow cannot hold (a lone surrogate) as its bytes, as a hostile writer could."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    def storable(v):
        return v.encode("utf-8", "surrogatepass") if isinstance(v, str) and not is_utf8(v) else v

    def as_text(cells):
        return pa.array([None if v is None else v if isinstance(v, bytes) else storable(dumps(v)) for v in cells])

    arrays = {}
    for name, cells in columns.items():
        try:
            arrays[str(name)] = pa.array([storable(v.text() if isinstance(v, Deep) else v) for v in cells])
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            arrays[str(name)] = as_text(cells)
    out = io.BytesIO()
    try:
        pq.write_table(pa.table(arrays), out)
    except pa.ArrowException:  # a type Parquet cannot hold (a struct without fields): as text
        out = io.BytesIO()
        pq.write_table(pa.table({name: as_text(cells) for name, cells in columns.items()}), out)
    return out.getvalue()


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


PARQUET_COLUMN = st.one_of(
    st.lists(st.one_of(st.none(), st.text(max_size=6)), min_size=2, max_size=2),
    st.lists(st.integers(-5, 5), min_size=2, max_size=2),
    st.lists(st.floats(), min_size=2, max_size=2),
    st.lists(st.booleans(), min_size=2, max_size=2),
    st.lists(st.lists(st.text(max_size=3), max_size=2), min_size=2, max_size=2),
    st.lists(st.binary(max_size=4), min_size=2, max_size=2))


@FUZZ
@given(st.one_of(mutated([parquet_bytes({"id": ["a1", "a2"], "prompt": ["Q?", "R?"], "task": ["t", "t"]})]),
                 POOL_ROWS.map(lambda rows: parquet_bytes(columns_of(rows))),
                 st.dictionaries(st.sampled_from(["id", "prompt", "task", "response", "choices", "x"]), PARQUET_COLUMN,
                                 min_size=1).map(parquet_bytes)))
def test_pool_parquet(scratch, content):
    bounded("pool.parquet", lambda: load_pool(write(scratch / "pool.parquet", content), scratch))


@pytest.fixture(scope="module")
def saved_dataset(scratch):
    datasets = pytest.importorskip("datasets")
    path = scratch / "saved-seed"
    datasets.Dataset.from_list(GOOD_ROWS[:1] + [dict(GOOD_ROWS[0], id="a2")]).save_to_disk(str(path))
    return path


@settings(FUZZ, max_examples=30 * SCALE)
@given(data=st.data())
def test_pool_saved_dataset(scratch, saved_dataset, data):
    """A save_to_disk directory with one of its files damaged (its Arrow data, dataset_info.json, state.json)."""
    target = scratch / "saved"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(saved_dataset, target)
    files = sorted(p.name for p in saved_dataset.iterdir())
    name = data.draw(st.sampled_from(files))
    write(target / name, data.draw(mutated([(saved_dataset / name).read_bytes()])))
    bounded("pool save_to_disk", lambda: load_pool(target, scratch))


# ----------------------------------------------------------------------------- scores and --exclude


@pytest.fixture(scope="module")
def small_pool(scratch):
    """Four prompts with responses and accepted answers: a pool, and a test set, of an experiment."""
    from taskdiv.pool.load import load_pool

    path = write(scratch / "base-pool.jsonl", "".join(
        json.dumps({"id": i, "prompt": f"Q {i}?", "task": i[0], "response": "yes", "targets": ["yes"]}) + "\n"
        for i in ("a1", "a2", "a3", "b1")))
    return load_pool(str(path))


def score_row(i: int):
    return st.fixed_dictionaries({"id": st.sampled_from(["a1", "a2", "a3", "b1"]),
                                  "confidence": st.one_of(st.floats(0, 1), st.sampled_from(["0.5", "1", "nan", "", 2]))})


SCORES = perturbed(rows_of(score_row, max_size=5))


@FUZZ
@given(st.one_of(mutated([b"id,confidence\na1,0.5\na2,0.25\nb1,1\n"]),
                 st.tuples(SCORES, st.lists(st.lists(CSV_CELL, max_size=3), max_size=1)).map(lambda t: table_csv(*t)),
                 SCORES.map(lambda rows: (parquet_bytes(columns_of(rows)), ".parquet"))))
def test_scores(scratch, small_pool, content):
    from taskdiv.selection.scores import align_scores, read_score_file

    content, suffix = content if isinstance(content, tuple) else (content, ".csv")

    def read():
        scores = read_score_file(write(scratch / f"scores{suffix}", content))
        aligned = align_scores(scores, small_pool)
        assert len(aligned) == len(small_pool)
        finite = aligned[np.isfinite(aligned)]
        assert ((finite >= 0) & (finite <= 1)).all()
        return aligned

    bounded("--scores", read)


@FUZZ
@given(st.one_of(mutated([b"a1\na2\n", GOOD_JSONL]).map(lambda b: (b, ".txt")),
                 mutated([GOOD_JSONL]).map(lambda b: (b, ".jsonl")),
                 st.lists(st.one_of(PLAIN, TEXT), max_size=4).map(lambda ids: ("\n".join(ids), ".txt")),
                 POOL_ROWS.map(lambda rows: ("".join(dumps(r) + "\n" for r in rows), ".jsonl")),
                 POOL_ROWS.map(lambda rows: (table_csv(rows), ".csv"))))
def test_exclude(scratch, content):
    from taskdiv.pool.readers import read_ids

    data, suffix = content

    def read():
        ids = read_ids(write(scratch / f"exclude{suffix}", data))
        assert all(is_text(i) for i in ids)
        return ids

    bounded("--exclude", read)


# ----------------------------------------------------------------------------- YAML

BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"]
                 + [f"{k}: &{k} [{', '.join([f'*{p}'] * 9)}]" for p, k in zip("abcdefg", "bcdefgh")]
                 + ["budget: [*h, *h, *h, *h, *h, *h, *h, *h, *h]"]).encode()
GOOD_YAML = b"budget: 10%\nstrategy: task-diversity\nseed: 3\n"
YAML_SEEDS = [GOOD_YAML, BOMB, b"budget: " + b"[" * 3000 + b"]" * 3000, b"a: &a [*a]\n",
              "budget: 2 # caf\xe9".encode("latin-1"), b"seed: !!python/object:os.system x\n", b"budget: 2026-13-45\n",
              b"seed: " + b"9" * 5000 + b"\n", b'strategy: "\\ud800"\n', b"? [a, b]\n: 1\n", b"<<: {budget: 3}\n",
              b"- 1\n- 2\n", b"%YAML 1.1\n---\n", b"x: &x 1\nseed: *x\n"]


def yaml_text(value) -> str:
    """YAML of `value`, in flow style (so that a Deep value can stand anywhere); a text YAML cannot
    hold (a lone surrogate) is written escaped."""
    return _serialise(value, lambda v: yaml.safe_dump(v, default_flow_style=True, allow_unicode=False, width=1 << 30))


def command_configs():
    import importlib

    from taskdiv.cli import COMMANDS

    return [getattr(importlib.import_module(module), cls) for module, cls, _, _ in COMMANDS.values()]


def option_values(cls) -> st.SearchStrategy:
    """Mappings of a few of `cls`'s options to values of their type (and, perturbed, of any other)."""
    import dataclasses
    import typing

    from taskdiv.common.config import _base_type

    hints = typing.get_type_hints(cls)
    kinds = {int: st.integers(0, 5), float: st.floats(0, 2), bool: st.booleans(), dict: st.just({}),
             str: st.one_of(PLAIN, st.sampled_from(["10%", "random", "task-diversity", "s3://KEY:fuzz-Zq8@b/x"]))}
    options = {}
    for f in dataclasses.fields(cls):
        base, is_list = _base_type(hints[f.name])
        value = st.sampled_from(f.metadata["choices"]) if "choices" in f.metadata else kinds.get(base, values())
        options[f.name.replace("_", "-") if f.name.startswith("t") else f.name] = \
            st.lists(value, min_size=1, max_size=2) if is_list else value
    return perturbed(st.fixed_dictionaries({}, optional=options))


@settings(FUZZ, max_examples=80 * SCALE)
@given(data=st.data())
def test_config_yaml(scratch, data):
    """--config FILE.yaml of any command: bytes, and mappings of its own option names to any values."""
    import dataclasses

    from taskdiv.common import config

    cls = data.draw(st.sampled_from(command_configs()))
    content = data.draw(st.one_of(mutated(YAML_SEEDS), option_values(cls).map(yaml_text)))
    path = write(scratch / "config.yaml", content)
    required = {f.name: "x" for f in dataclasses.fields(cls) if f.metadata.get("required")}  # given as flags
    bounded("--config YAML", lambda: config.build(cls, required, path))


GOOD_EXPERIMENT = {"pool": "POOL", "test": "POOL", "model": "smollm2-135m-instruct", "strategies": ["random"],
                   "budgets": [2], "seeds": [0], "suites": ["heldout"], "train": {"epochs": 1},
                   "score": {"batch_size": 2}}


@settings(FUZZ, max_examples=30 * SCALE)
@given(data=st.data())
def test_experiment_yaml(scratch, small_pool, data):
    """An experiment's YAML, and what `experiment --dry-run` checks of it before any work (the
    grid, every stage's options, the pool and test set it names)."""
    from taskdiv.experiments.grid import load_config
    from taskdiv.experiments.runner import Experiment

    good = dict(GOOD_EXPERIMENT, pool=small_pool.source, test=small_pool.source)
    wild = st.sampled_from([["random", "nope"], ["1%", "200%", 0], [{"strategies": ["random"], "budgets": [1]}],
                            {"epochs": 0}, {"lr": "x"}, {"batch_size": 0}, {"max_new_tokens": -1}, "bench:", "hf:"])
    changes = st.dictionaries(st.sampled_from(list(good) + ["grid", "full", "base", "within", "pool_fields",
                                                            "suite_options", "full_seeds", "x"]),
                              st.one_of(values(), wild), max_size=2)
    content = data.draw(st.one_of(mutated([yaml_text(good).encode(), BOMB]), perturbed(st.just(good)).map(yaml_text),
                                  st.tuples(perturbed(st.just(good)), changes).map(lambda t: yaml_text({**t[0], **t[1]}))))
    path = write(scratch / "experiment.yaml", content)
    out = scratch / "exp"
    shutil.rmtree(out, ignore_errors=True)
    bounded("experiment YAML", lambda: Experiment(load_config(path), out).prepare(), trace=False)


# ----------------------------------------------------------------------------- annotation exports


def selection_row(i: int):
    return st.fixed_dictionaries({"id": st.just(f"r{i}"), "task": st.sampled_from(["t", "u"]), "prompt": PLAIN},
                                 optional={"confidence": st.one_of(st.floats(0, 1), st.none()), "rank": st.just(i)})


@FUZZ
@given(jsonl_inputs(b'{"id":"a1","task":"t","prompt":"Q one?","confidence":0.5,"rank":1}\n', selection_row))
def test_selection(scratch, content):
    """The selection.jsonl that annotate export, import and oracle read."""
    from taskdiv.annotate.answers import read_selection

    def read():
        rows = read_selection(write(scratch / "selection.jsonl", content))
        assert all(is_text(v) for c in ("id", "task", "prompt") for v in rows[c])
        assert "confidence" not in rows.columns or rows["confidence"].dtype.kind == "f"
        return rows

    bounded("selection", read)


def check_items(items) -> None:
    from taskdiv.annotate.answers import Item

    assert items and all(isinstance(it, Item) and is_text(it.id) for it in items)
    for it in items:
        assert it.prompt is None or is_text(it.prompt)
        for a in it.answers:
            assert is_text(a.response) and a.status in ("submitted", "skipped", "empty")
            assert a.submitted_at is None or not pd.isna(pd.Timestamp(a.submitted_at))


def read_export(fmt: str, path: Path):
    from taskdiv.annotate.commands import read_answers

    items = read_answers(path, fmt)
    check_items(items)
    return items


TIME = st.one_of(st.sampled_from(["2026-01-31T12:00:00Z", "2026-01-31", "2026-02-01T00:00:00+05:00"]), st.none())


def ls_task(i: int):
    result = st.fixed_dictionaries({"from_name": st.just("response"), "value": st.fixed_dictionaries(
        {"text": st.lists(PLAIN, max_size=2)})})
    annotation = st.fixed_dictionaries({"id": st.integers(1, 9), "result": st.lists(result, max_size=2)}, optional={
        "was_cancelled": st.booleans(), "completed_by": st.one_of(st.integers(1, 3), st.just({"email": "a@b"})),
        "updated_at": TIME, "created_at": TIME})
    return st.fixed_dictionaries({"id": st.just(i), "data": st.fixed_dictionaries(
        {"id": st.sampled_from(["a1", "a2", "b1"]), "prompt": PLAIN, "task": st.just("t")}),
        "annotations": st.lists(annotation, max_size=2)})


GOOD_LS = json.dumps([{"id": 1, "data": {"id": "a1", "prompt": "Q one?", "task": "t"}, "annotations": [
    {"id": 7, "result": [{"from_name": "response", "value": {"text": ["A."]}}], "completed_by": {"email": "x@y"},
     "updated_at": "2026-01-31T12:00:00Z"}]}]).encode()


@FUZZ
@given(st.one_of(mutated([GOOD_LS]), perturbed(rows_of(ls_task)).map(dumps)))
def test_label_studio_export(scratch, content):
    bounded("Label Studio JSON", lambda: read_export("label-studio", write(scratch / "export.json", content)))


def argilla_record(i: int):
    response = st.fixed_dictionaries({"value": PLAIN}, optional={
        "status": st.sampled_from(["submitted", "discarded", "draft"]), "user_id": PLAIN, "updated_at": TIME})
    return st.fixed_dictionaries({"id": st.sampled_from(["a1", "a2", "b1"]), "fields": st.fixed_dictionaries(
        {"prompt": PLAIN}), "responses": st.fixed_dictionaries({"response": st.lists(response, max_size=2)})})


GOOD_ARGILLA = json.dumps([{"id": "a1", "fields": {"prompt": "Q one?"}, "responses": {"response": [
    {"value": "A.", "status": "submitted", "user_id": "u"}]}}]).encode()


@FUZZ
@given(st.one_of(mutated([GOOD_ARGILLA]), perturbed(rows_of(argilla_record)).map(dumps)))
def test_argilla_export(scratch, content):
    directory = scratch / "argilla"
    directory.mkdir(exist_ok=True)
    bounded("Argilla records", lambda: read_export("argilla", write(directory / "records.json", content)))


def answer(i: int):
    return st.fixed_dictionaries({"id": st.sampled_from(["a1", "a2", "b1"]), "response": PLAIN}, optional={
        "status": st.sampled_from(["submitted", "skipped", "cancelled", "discarded"]), "submitted_at": TIME,
        "annotator": PLAIN, "prompt": PLAIN})


@FUZZ
@given(jsonl_inputs(b'{"id": "a1", "response": "A.", "submitted_at": "2026-01-31T12:00:00Z"}\n', answer))
def test_jsonl_answers(scratch, content):
    bounded("JSONL answers", lambda: read_export("jsonl", write(scratch / "answers.jsonl", content)))


def store_row(i: int):
    return st.fixed_dictionaries({"id": st.sampled_from(["a1", "a2", "b1"]), "task": st.just("t"), "prompt": PLAIN,
                                  "response": PLAIN, "round": st.integers(1, 3)},
                                 optional={"submitted_at": TIME, "annotator": PLAIN, "source": PLAIN})


@FUZZ
@given(jsonl_inputs(b'{"id":"a1","task":"t","prompt":"Q one?","response":"A.","round":1}\n', store_row))
def test_annotation_store(scratch, content):
    """The store an import appends to (annotations.jsonl): its rows, and the SFT data made from them."""
    from taskdiv.annotate.store import read_store, sft_rows

    def read():
        store = read_store(write(scratch / "annotations.jsonl", content))
        assert all(is_text(v) for c in ("id", "task", "prompt", "response") for v in store[c])
        assert all(isinstance(r, int) and r >= 1 for r in store["round"])
        sft_rows(store)
        return store

    bounded("annotation store", read)


# ----------------------------------------------------------------------------- an experiment's files

RESULT = {"run": "random-b2-s0", "strategy": "random", "budget": "2", "budget_n": 2, "seed": 0, "accuracy": 0.5,
          "ci_low": 0.25, "ci_high": 0.75, "n_test": 8, "seconds": 1.5, "suite": "heldout"}


@FUZZ
@given(st.one_of(mutated([json.dumps(RESULT).encode()]), perturbed(st.just(RESULT)).map(dumps),
                 st.dictionaries(st.sampled_from(list(RESULT) + ["mmlu_accuracy", "same_as"]),
                                 st.one_of(values(), NUMBER), max_size=2).map(lambda c: dumps({**RESULT, **c}))))
def test_result_json(scratch, content):
    from taskdiv.experiments.collate import read_result

    bounded("result.json", lambda: read_result(write(scratch / "result.json", content)))


RESULTS_CSV = ("run,strategy,budget,budget_n,seed,accuracy,ci_low,ci_high,n_test,seconds\n"
               "base,base,0,0,0,0.25,0.1,0.4,8,1\nrandom-b2-s0,random,2,2,0,0.5,0.25,0.75,8,2\n"
               "task-diversity-b2-s0,task-diversity,2,2,0,0.625,0.3,0.9,8,2\n").encode()
PER_TASK_CSV = b"run,task,n,accuracy\nbase,t,4,0.25\nrandom-b2-s0,t,4,0.5\ntask-diversity-b2-s0,t,4,0.75\n"
ALLOCATIONS_CSV = (b"run,strategy,budget,budget_n,seed,task,allocated,confidence\n"
                   b"random-b2-s0,random,2,2,0,t,2,0.5\ntask-diversity-b2-s0,task-diversity,2,2,0,t,2,0.5\n")
TASKS_CSV = b"task,available,confidence\nt,4,0.5\nu,3,\n"
KINDS_CSV = b"task,kind\nt,generative\nu,yes/no\n"


def table_rows(header: bytes):
    names = header.decode().split(",")
    cell = st.one_of(CSV_CELL, st.sampled_from(["0.5", "2", "-3", "inf", "nan", "7.5", "1e999", "t", "random"]))
    return st.lists(st.lists(cell, min_size=len(names) - 1, max_size=len(names) + 1), max_size=4).map(
        lambda rows: csv_text([names, *rows]).encode("utf-8", "surrogatepass"))


@pytest.fixture(scope="module")
def quiet_report():
    """report without its plots and report.md (matplotlib takes seconds); run once on a good
    experiment first, as its first run imports scipy (seconds too)."""
    from taskdiv.report import commands as report

    with unittest.mock.patch.multiple(report, _write_report=lambda *a: None, plot_accuracy=lambda *a: None,
                                      plot_allocation=lambda *a: None, plot_task_gains=lambda *a: None,
                                      plot_confidence_gain=lambda *a: None):
        with tempfile.TemporaryDirectory() as exp:
            write_experiment(Path(exp))
            report.build_report(Path(exp))
        yield report


def write_experiment(exp: Path, changed: str | None = None, content: bytes = b"") -> Path:
    shutil.rmtree(exp, ignore_errors=True)
    (exp / "scores").mkdir(parents=True)
    for file, text in (("results.csv", RESULTS_CSV), ("per_task.csv", PER_TASK_CSV),
                       ("allocations.csv", ALLOCATIONS_CSV), ("scores/tasks.csv", TASKS_CSV),
                       ("task_kinds.csv", KINDS_CSV)):
        write(exp / file, content if file == changed else text)
    return exp


@settings(FUZZ, max_examples=30 * SCALE)
@given(data=st.data())
def test_report_tables(scratch, quiet_report, data):
    """The CSV files `report` reads (results.csv, per_task.csv, allocations.csv, scores/tasks.csv,
    task_kinds.csv), one of them drawn: read as report reads them, then every table of report.md
    computed from them (the plots are left out: matplotlib takes seconds)."""
    name, seed = data.draw(st.sampled_from([("results.csv", RESULTS_CSV), ("per_task.csv", PER_TASK_CSV),
                                            ("allocations.csv", ALLOCATIONS_CSV), ("scores/tasks.csv", TASKS_CSV),
                                            ("task_kinds.csv", KINDS_CSV)]))
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(seed.decode())))
    content = data.draw(st.one_of(mutated([seed]), table_rows(seed.split(b"\n")[0]), st.just(seed.split(b"\n")[0]),
                                  perturbed(st.just(rows)).map(lambda r: table_csv(r).encode("utf-8", "surrogatepass"))))
    exp = write_experiment(scratch / "exp", name, content)
    bounded("report CSVs", lambda: quiet_report.build_report(exp), trace=False)
