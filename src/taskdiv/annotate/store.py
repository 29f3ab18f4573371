"""The annotation store: answers accepted over all rounds, and the SFT dataset made from it.

`annotations.jsonl` (beside the SFT dataset unless --store says otherwise) holds one
row per accepted answer: id, task, prompt, response, round, source, format, annotator,
submitted_at, selection. Imports only append to it. The SFT dataset (id, task, prompt,
response) is rewritten from it after every import: each annotated prompt once, with
its latest answer, in the order first annotated. Its `id` column makes it a valid
`taskdiv select --exclude` file.

Rules (each case is reported by id, on screen and in import-round-N.json):
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
from pathlib import Path

import pandas as pd

from ..common.atomic import output_set
from ..common.errors import DataError, TaskdivError
from ..common.inputs import iter_jsonl
from ..common.locks import locked, remove_stale
from ..common.outputs import check_output_file, nearest_existing
from ..common.writers import dump_jsonl, dumps_json
from .answers import Item

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


# ----------------------------------------------------------------------------- resolving


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


def resolve(items: list[Item], selection: pd.DataFrame, store: pd.DataFrame, *, source: str,
            fmt: str, selection_path: str, skip_unknown: bool = False) -> tuple[list[dict], dict]:
    """The store rows to append and a report of every id, by category (see the module docstring)."""
    sel = selection.set_index("id", drop=False)
    latest = store.drop_duplicates("id", keep="last").set_index("id", drop=False) if len(store) else store
    # Per id: every answer the store holds, and the latest submission time among them.
    stored_answers = store.groupby("id")["response"].agg(set).to_dict() if len(store) else {}
    stored_latest = store.groupby("id")["submitted_at"].agg(lambda ts: max(map(_time, ts))).to_dict() \
        if len(store) else {}
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
        answers = [a for it in its for a in it.answers]
        accepted = [a for a in answers if a.status == "submitted"]
        if not accepted:
            key = "not_annotated" if not answers else ("skipped" if any(a.status == "skipped" for a in answers)
                                                     else "empty")
            report[key].append(pid)
            continue
        order = sorted(range(len(accepted)), key=lambda k: (_time(accepted[k].submitted_at), k))
        win = accepted[order[-1]]
        if len(accepted) > 1:
            report["superseded"][pid] = {"kept": win.where, "dropped": [accepted[k].where for k in order[:-1]]}
        if pid not in sel.index:
            report["earlier_round"].append(pid)
        base = sel.loc[pid] if pid in sel.index else latest.loc[pid]
        response = win.response.strip()
        if pid in latest.index:
            prev = latest.loc[pid]
            if prev["response"] == response:
                report["unchanged"].append(pid)
                continue
            new_time, stored_time = _time(win.submitted_at), _time(prev.get("submitted_at"))
            if math.isfinite(new_time) and math.isfinite(stored_time):
                if new_time < stored_time:
                    report["kept_stored"].append(pid)
                    continue
            elif response in stored_answers.get(pid, ()) and not new_time > stored_latest[pid]:
                # An earlier round's answer again, not submitted after it: an old export re-imported.
                report["earlier_answer"].append(pid)
                continue
            report["replaced"].append(pid)
        else:
            report["imported"].append(pid)
        rows.append({"id": pid, "task": base["task"], "prompt": base["prompt"], "response": response,
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
    the temporaries of the store, its round report and the SFT dataset (atomic.output_set names
    them .NAME.XXXXXXXX.tmp) and the copies it keeps while renaming (.NAME.PID.N.old). Called
    under the store's lock, so no other import is writing them; the SFT dataset's only when it
    lies in that directory (elsewhere another import, into another store, may be writing it)."""
    import glob

    directory = store_path.parent
    names = [glob.escape(store_path.name), "import-round-*.json"]
    if out.parent.resolve() == directory.resolve():
        names.append(glob.escape(out.name))
    for name in names:
        remove_stale(directory, f".{name}.*.tmp")
        remove_stale(directory, f".{name}.*.old")


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
