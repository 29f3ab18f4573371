"""The annotation store: answers accepted over all rounds, and the SFT dataset made from it.

`annotations.jsonl` (beside the SFT dataset unless --store says otherwise) holds one
row per accepted answer: id, task, prompt, response, round, source, format, annotator,
submitted_at, selection. Imports only append to it. The SFT dataset (id, task, prompt,
response) is rewritten from it after every import: each annotated prompt once, with
its latest answer, in the order first annotated. Its `id` column makes it a valid
`taskdiv select --exclude` file.

Rules (each case is reported by id, on screen and in import-round-N.json; `decide` applies the
rules of one id's answers, a pure function, and `resolve` the rest):
- skipped (cancelled) and empty answers are not imported;
- several answers to one prompt: the latest submitted non-empty one wins (by the
  tool's submission time; where the export has none, the last in file order);
- an id already in the store: an answer identical to the stored one is left alone; a
  different one is appended and replaces it, except (a) when both carry a submission
  time and it was submitted before the stored one, and (b) when one of them has no time
  and it is an answer the store held for that id in an earlier round, not submitted
  after every stored time (an old export imported again): the stored one is then kept. An answer without a time
  (JSONL, Argilla's records file, oracle) otherwise counts as the newest: importing it
  is the latest thing the user did;
- ids neither in the selection nor in the store are an error (an export of another
  selection), or, with skip_unknown, dropped and reported; a prompt whose text
  differs from the selection's is an error.
Nothing is written unless the whole file is valid and holds something to import, and
the three outputs are replaced as one unit (atomic.output_set), under a lock on the
store's directory held from reading the store to the rename, so two imports into one
shared store at once both land. A store that is a
symbolic link (one store shared by several projects) is written through the link, and
the round reports go beside the file it points to.
"""
from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from ..common.atomic import output_set, remove_leftovers
from ..common.errors import DataError, TaskdivError
from ..common.inputs import iter_jsonl
from ..common.locks import LOCK_NAME, locked
from ..common.outputs import check_output_file, nearest_existing
from ..common.writers import dump_jsonl, dumps_json
from .answers import Answer, Item

STORE_NAME = "annotations.jsonl"
SFT_COLUMNS = ["id", "task", "prompt", "response"]


def read_store(path: Path) -> pd.DataFrame:
    """The annotation store (empty frame when it does not exist yet)."""
    columns = SFT_COLUMNS + ["round", "source", "format", "annotator", "submitted_at", "selection"]
    if not path.exists():
        return pd.DataFrame(columns=columns)
    rows = []
    for lineno, rec in iter_jsonl(path):
        missing = [c for c in SFT_COLUMNS + ["round"] if c not in rec]
        if missing:
            raise DataError(f"not an annotation store row (missing {missing})", file=path, line=lineno)
        for field in SFT_COLUMNS:  # what an import wrote: text (an edit by hand may have left other values)
            if not isinstance(rec[field], str) or not rec[field].strip():
                raise DataError(f"{rec[field]!r} is no text", file=path, line=lineno, field=field)
        if isinstance(rec["round"], bool) or not isinstance(rec["round"], int) or rec["round"] < 1:
            raise DataError(f"{rec['round']!r} is not a round (a whole number from 1)", file=path, line=lineno,
                            field="round")
        if rec.get("submitted_at") is not None and not isinstance(rec["submitted_at"], str):
            raise DataError(f"{rec['submitted_at']!r} is not a date and time", file=path, line=lineno,
                            field="submitted_at")
        rows.append(rec)
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------- the rules


def _time(value) -> float:
    """A sortable submission time; unknown times sort first (-inf)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return -math.inf
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        return -math.inf
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return ts.timestamp()


class Stored(NamedTuple):
    """One answer the store holds for an id: its response and submission time (None when unknown)."""

    response: str
    submitted_at: str | None = None


@dataclass(frozen=True)
class Decision:
    """What an import does with one id's answers.

    `outcome` is the report's category: "imported" (new id), "replaced" (appended, replaces the
    stored answer), "unchanged", "kept_stored", "earlier_answer" (the stored answer stays), or
    "skipped", "empty", "not_annotated" (nothing accepted). `answer` is the winning answer (None
    when nothing was accepted), `dropped` the other accepted ones, oldest first."""

    outcome: str
    answer: Answer | None = None
    dropped: tuple[Answer, ...] = ()

    @property
    def appends(self) -> bool:
        """Whether the winning answer is appended to the store."""
        return self.outcome in ("imported", "replaced")

    @property
    def response(self) -> str | None:
        return None if self.answer is None else self.answer.response.strip()


def decide(answers: Sequence[Answer], stored: Sequence[Stored] = ()) -> Decision:
    """The rules of the module docstring for one id: its answers in this import (in file order)
    against what the store holds for it (`stored`, in store order, oldest first; empty for a new
    id). Pure: no disk, no frames."""
    accepted = [a for a in answers if a.status == "submitted"]
    if not accepted:
        return Decision(_not_accepted(answers))
    win, dropped = _latest_submitted(accepted)
    return Decision(_against_store(win.response.strip(), _time(win.submitted_at), stored), win, dropped)


def _not_accepted(answers: Sequence[Answer]) -> str:
    """Why nothing is imported: no answer at all, a skipped one among them, or only empty ones."""
    if not answers:
        return "not_annotated"
    return "skipped" if any(a.status == "skipped" for a in answers) else "empty"


def _latest_submitted(accepted: list[Answer]) -> tuple[Answer, tuple[Answer, ...]]:
    """The latest submitted answer and the others, oldest first. Answers without a time sort
    before every timed one; ties (no times at all) go to the last in file order."""
    order = sorted(range(len(accepted)), key=lambda k: (_time(accepted[k].submitted_at), k))
    return accepted[order[-1]], tuple(accepted[k] for k in order[:-1])


def _against_store(response: str, new_time: float, stored: Sequence[Stored]) -> str:
    """The outcome of the winning answer (stripped `response`, sortable `new_time`) against the
    id's stored answers."""
    if not stored:
        return "imported"
    prev = stored[-1]
    if prev.response == response:
        return "unchanged"
    stored_time = _time(prev.submitted_at)
    if math.isfinite(new_time) and math.isfinite(stored_time):
        return "kept_stored" if new_time < stored_time else "replaced"
    # One of the two has no time: an untimed answer counts as the newest, unless it is an earlier
    # round's answer again, not submitted after every stored time (an old export re-imported).
    if response in {s.response for s in stored} and not new_time > max(_time(s.submitted_at) for s in stored):
        return "earlier_answer"
    return "replaced"


# ----------------------------------------------------------------------------- resolving


def resolve(items: list[Item], selection: pd.DataFrame, store: pd.DataFrame, *, source: str,
            fmt: str, selection_path: str, skip_unknown: bool = False) -> tuple[list[dict], dict]:
    """The store rows to append and a report of every id, by category (see the module docstring)."""
    sel = selection.set_index("id", drop=False)
    latest = store.drop_duplicates("id", keep="last").set_index("id", drop=False) if len(store) else store
    # Per id: every answer the store holds, oldest first (the rules read them through `decide`).
    stored: dict[str, list[Stored]] = {}
    if len(store):
        for pid, response, submitted_at in zip(store["id"], store["response"], store["submitted_at"]):
            stored.setdefault(pid, []).append(Stored(response, submitted_at))
    by_id: dict[str, list[Item]] = {}
    for item in items:
        by_id.setdefault(item.id, []).append(item)

    unknown = [i for i in by_id if i not in sel.index and i not in latest.index]
    if unknown and not skip_unknown:
        raise DataError(f"{len(unknown)} of {len(by_id)} id(s) are not in the selection {selection_path} "
                        f"nor in the annotation store: {examples(unknown)}. Is this an export of another "
                        f"selection? (--skip-unknown drops them)", file=source)
    mismatched = []
    for pid, its in by_id.items():
        ref = sel if pid in sel.index else latest if pid in latest.index else None
        if ref is not None and any(it.prompt is not None and it.prompt.strip() != ref.at[pid, "prompt"].strip()
                                   for it in its):
            mismatched.append(pid)
    if mismatched:
        raise DataError(f"{len(mismatched)} prompt(s) differ from the selection's text for the same id: "
                        f"{examples(mismatched)}. Is this an export of another selection?", file=source)

    report: dict[str, object] = {k: [] for k in (
        "imported", "replaced", "unchanged", "kept_stored", "skipped", "empty", "not_annotated",
        "not_in_export", "unknown", "earlier_round", "earlier_answer")}
    report["superseded"] = {}
    next_round = int(store["round"].max()) + 1 if len(store) else 1
    rows = []
    for pid, its in by_id.items():
        if pid in unknown:
            report["unknown"].append(pid)
            continue
        decision = decide([a for it in its for a in it.answers], stored.get(pid, ()))
        win = decision.answer
        if win is not None:
            if decision.dropped:
                report["superseded"][pid] = {"kept": win.where, "dropped": [a.where for a in decision.dropped]}
            if pid not in sel.index:
                report["earlier_round"].append(pid)
        report[decision.outcome].append(pid)
        if decision.appends:
            base = sel.loc[pid] if pid in sel.index else latest.loc[pid]
            rows.append({"id": pid, "task": base["task"], "prompt": base["prompt"], "response": decision.response,
                         "round": next_round, "source": source, "format": fmt, "annotator": win.annotator,
                         "submitted_at": win.submitted_at, "selection": selection_path})
    report["not_in_export"] = [i for i in sel["id"] if i not in by_id]
    return rows, report


def examples(ids, n: int = 10) -> str:
    ids = list(ids)
    text = ", ".join(repr(i) for i in ids[:n])
    return text + (f" and {len(ids) - n} more" if len(ids) > n else "")


# ----------------------------------------------------------------------------- writing


def sft_rows(store: pd.DataFrame) -> pd.DataFrame:
    """The SFT dataset: each annotated id once, with its latest stored answer, in first-annotated order."""
    first = store.drop_duplicates("id", keep="first")["id"]
    latest = store.drop_duplicates("id", keep="last").set_index("id")
    return latest.loc[first, SFT_COLUMNS[1:]].reset_index()[SFT_COLUMNS]


def store_paths(out, store=None, inputs=()) -> tuple[Path, Path]:
    """(SFT dataset, annotation store): the store defaults to annotations.jsonl beside the dataset.

    Both must be writable and neither one of the command's `inputs` (checked now, before any
    work); a store that is a symbolic link is resolved, so that the store it points to gets the answers."""
    out = Path(out)
    store = Path(store) if store else out.parent / STORE_NAME
    if out.suffix != ".jsonl":
        raise TaskdivError(f"--out {out}: the SFT dataset is written as .jsonl")
    if out.resolve() == store.resolve():
        raise TaskdivError(f"--out {out} is the annotation store; write the SFT dataset to another file")
    if store.is_symlink():
        store = store.resolve()
    check_output_file(out, inputs=inputs)
    check_output_file(store, inputs=inputs)
    return out, store


def ingest(items: list[Item], selection: pd.DataFrame, out, store=None, *, source: str, fmt: str,
           selection_path: str, skip_unknown: bool = False) -> dict:
    """Resolve the items against the selection and store, then write store, SFT data and report."""
    out, store_path = store_paths(out, store)
    with store_lock(store_path.parent, f"importing into {store_path}"):
        return _ingest(items, selection, out, store_path, source=source, fmt=fmt, selection_path=selection_path,
                       skip_unknown=skip_unknown)


@contextlib.contextmanager
def store_lock(directory: Path, doing: str):
    """Hold the lock on the store's directory. Before the first import the directory does
    not exist: its nearest existing parent is locked, the directory made and locked too,
    so that an import that finds it made waits as well (locking only the parent, two first
    imports would each hold a different lock). A refused first import leaves no trace: the
    directories it made are removed again when nothing landed in them."""
    anchor = nearest_existing(directory)
    with locked(anchor, doing):
        if anchor == directory:
            yield
            return
        made = [p for p in (directory, *directory.parents) if anchor in p.parents and not p.exists()]
        directory.mkdir(parents=True, exist_ok=True)  # another first import may have made it meanwhile
        try:
            with locked(directory, doing):
                yield
        finally:
            for p in made:  # deepest first
                with contextlib.suppress(OSError):  # not empty: the import landed
                    if p == directory and [c.name for c in p.iterdir()] == [LOCK_NAME]:
                        (p / LOCK_NAME).unlink()  # only the lock's file (no fcntl): nothing landed
                    p.rmdir()


def _ingest(items, selection, out, store_path, *, source, fmt, selection_path, skip_unknown) -> dict:
    clear_leftovers(store_path, out)
    store = read_store(store_path)
    rows, report = resolve(items, selection, store, source=source, fmt=fmt, selection_path=selection_path,
                           skip_unknown=skip_unknown)
    if not rows and not report["unchanged"] and not report["kept_stored"] and not report["earlier_answer"]:
        raise TaskdivError(
            f"{source}: no answers to import ({len(report['skipped'])} skipped, {len(report['empty'])} empty, "
            f"{len(report['not_annotated'])} not annotated, {len(report['unknown'])} unknown); nothing written")
    full = pd.concat([store, pd.DataFrame(rows, columns=store.columns)], ignore_index=True) if rows else store
    report_path = None
    targets = [out]
    if rows:
        report_path = store_path.parent / f"import-round-{int(rows[0]['round'])}.json"
        targets = [store_path, report_path, out]
    with output_set(*targets) as tmps:
        if rows:
            dump_jsonl(tmps[0], full.to_dict(orient="records"))
            tmps[1].write_text(dumps_json({"source": source, "format": fmt, "selection": selection_path,
                                           "round": int(rows[0]["round"]), **report}), encoding="utf-8")
        dump_jsonl(tmps[-1], sft_rows(full).to_dict(orient="records"))
    report.update(round=int(rows[0]["round"]) if rows else None, report_path=report_path, store=store_path,
                  out=out, total=int(full["id"].nunique()))
    return report


def clear_leftovers(store_path: Path, out: Path) -> None:
    """Remove what an import killed while writing (SIGKILL, a crash) left in the store's directory:
    the temporaries and rename backups of the store, its round reports and the SFT dataset
    (`atomic.remove_leftovers`; the writes of this import clear those of its own outputs too, but
    an earlier round's report is not rewritten). Called under the store's lock, so no other import
    is writing them; the SFT dataset's only when it lies in that directory (elsewhere another
    import, into another store, may be writing it)."""
    directory = store_path.parent
    names = [re.escape(store_path.name), r"import-round-\d+\.json"]
    if out.parent.resolve() == directory.resolve():
        names.append(re.escape(out.name))
    for name in names:
        remove_leftovers(directory, name, locked=True)


def print_report(report: dict) -> None:
    labels = [("imported", "new answers"), ("replaced", "replaced an earlier answer"),
              ("unchanged", "already in the store, unchanged"),
              ("kept_stored", "submitted before the stored answer; kept the stored one"),
              ("earlier_answer", "an answer stored in an earlier round, replaced since; kept the later one"),
              ("earlier_round", "not in this selection but from an earlier round"),
              ("skipped", "skipped by the annotator"), ("empty", "empty answer"),
              ("not_annotated", "in the export without an answer"), ("not_in_export", "selected but not in the export"),
              ("unknown", "not in the selection (dropped)")]
    for key, label in labels:
        ids = report[key]
        if ids:
            print(f"{len(ids):6d} {label}: {examples(ids)}")
    if report["superseded"]:
        ids = list(report["superseded"])
        print(f"{len(ids):6d} with several answers (the latest submitted was kept): {examples(ids)}")
    if report["round"] is None:
        print("nothing new to import")
    else:
        print(f"round {report['round']}: appended to {report['store']}; report in {report['report_path']}")
    print(f"wrote {report['total']} annotated prompt(s) to {report['out']}")
