"""`taskdiv annotate`: send selected prompts to annotators and take their answers back.

    taskdiv annotate export SELECTION --format label-studio|argilla|jsonl --out DIR
    taskdiv annotate import FILE --format label-studio|argilla|jsonl --selection SELECTION --out DATA.jsonl
    taskdiv annotate oracle SELECTION --pool POOL --out DATA.jsonl

Import (and oracle, which answers from the pool's reference responses) appends the
accepted answers to an annotation store, `annotations.jsonl` beside DATA.jsonl, and
rewrites DATA.jsonl from it: the SFT dataset `taskdiv train` reads (id, task, prompt,
response), one row per annotated prompt over all rounds. The store has an `id` column,
so `taskdiv select --exclude DIR/annotations.jsonl` skips annotated prompts next round.

Rules (each case is reported by id, on screen and in DIR/import-round-N.json):
- skipped (cancelled) and empty answers are not imported;
- several answers to one prompt: the latest submitted non-empty one wins (by the
  tool's submission time; where the export has none, the last in file order);
- an id already in the store: an identical answer is left alone, a different one is
  appended and replaces it, unless it was submitted before the stored one;
- ids neither in the selection nor in the store are an error (an export of another
  selection), or, with --skip-unknown, dropped and reported; a prompt whose text
  differs from the selection's is an error.
Nothing is written unless the whole file is valid and holds something to import.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .data import FieldMap, load_pool
from .errors import DataError, TaskdivError, unknown_name
from .fileio import atomic_path

log = logging.getLogger(__name__)

FORMATS = ("label-studio", "argilla", "jsonl")
STORE_NAME = "annotations.jsonl"
SFT_COLUMNS = ["id", "task", "prompt", "response"]


@dataclass
class Answer:
    """One annotator's answer to one prompt, as read from a tool's export."""

    response: str
    status: str  # 'submitted', 'skipped' (cancelled/discarded) or 'empty'
    annotator: str | None = None
    submitted_at: str | None = None
    where: str = ""  # how the export names it, for reports


@dataclass
class Item:
    """One exported prompt (a Label Studio task, an Argilla record, a JSONL id) and its answers."""

    id: str
    prompt: str | None
    answers: list[Answer]
    where: str = ""


# ----------------------------------------------------------------------------- configs


def _format_field(help_text: str):
    return field(default=None, metadata={"required": True, "help": help_text})


@dataclass
class ExportConfig:
    selection: str | None = field(default=None, metadata={
        "positional": True, "required": True, "help": "selection.jsonl written by `taskdiv select`."})
    format: str | None = _format_field(
        "label-studio (tasks.json + config.xml), argilla (a dataset saved in the SDK's to_disk layout) "
        "or jsonl (prompts.jsonl with an empty response field).")
    out: str | None = field(default=None, metadata={"required": True, "help": "Output directory."})
    name: str | None = field(default=None, metadata={
        "help": "Argilla dataset name (default: the output directory's name)."})


def _out_field():
    return field(default=None, metadata={
        "required": True, "help": "The SFT dataset to write (JSONL: id, task, prompt, response), all rounds so far."})


def _store_field():
    return field(default=None, metadata={
        "help": f"Annotation store to append to (default: {STORE_NAME} beside --out); "
                "pass it to `taskdiv select --exclude` for the next round."})


@dataclass
class ImportConfig:
    file: str | None = field(default=None, metadata={
        "positional": True, "required": True,
        "help": "The tool's export: Label Studio JSON export, an Argilla dataset directory saved with "
                "Dataset.to_disk (or its records.json), or JSONL with id and response."})
    format: str | None = _format_field("Format of FILE: label-studio, argilla or jsonl.")
    selection: str | None = field(default=None, metadata={
        "required": True, "help": "The selection.jsonl the exported prompts came from."})
    skip_unknown: bool = field(default=False, metadata={
        "help": "Drop (and report) answers whose id is neither in the selection nor in the store, "
                "instead of failing."})
    out: str | None = _out_field()
    store: str | None = _store_field()


@dataclass
class OracleConfig(FieldMap):
    selection: str | None = field(default=None, metadata={
        "positional": True, "required": True, "help": "selection.jsonl written by `taskdiv select`."})
    pool: str | None = field(default=None, metadata={
        "required": True, "help": "The pool the selection came from; its reference responses are the answers."})
    out: str | None = _out_field()
    store: str | None = _store_field()


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise unknown_name("annotation format", name, FORMATS)
    return name


# ----------------------------------------------------------------------------- reading


def read_json_document(path: Path):
    """A JSON file's content, with errors that name the file and line."""
    data = path.read_bytes()
    if not data.strip():
        raise DataError("the file is empty", file=path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 (byte {e.start})", file=path, line=data.count(b"\n", 0, e.start) + 1) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg} at column {e.colno})", file=path, line=e.lineno) from None


def read_selection(path) -> pd.DataFrame:
    """The selection's rows (id, task, prompt, and confidence when scored), validated."""
    from .data import _read_path, normalise

    path = Path(path)
    if not path.exists():
        raise TaskdivError(f"{path}: no such selection file")
    if path.suffix != ".jsonl":
        raise TaskdivError(f"{path}: expected the selection.jsonl written by `taskdiv select`")
    raw, where = _read_path(path)
    if len(raw) == 0:
        raise DataError("the selection is empty", file=path)
    if "id" not in raw.columns:
        raise DataError("no 'id' column: not a selection written by `taskdiv select`", file=path)
    frame = normalise(raw, FieldMap(), source=str(path), where=where)
    if "confidence" in raw.columns:
        frame["confidence"] = pd.to_numeric(raw["confidence"], errors="coerce").to_numpy()
    return frame


def _read_jsonl_answers(path: Path) -> list[Item]:
    """Items from JSONL: one answer a line, with `id` and `response` (and optionally
    `status` ('skipped' for a skipped prompt), `annotator`, `submitted_at`, `prompt`)."""
    items: dict[str, Item] = {}
    data = path.read_bytes()
    if not data.strip():
        raise DataError("the file is empty", file=path)
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise DataError("not UTF-8", file=path, line=lineno) from None
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON ({e.msg} at column {e.colno})", file=path, line=lineno) from None
        if not isinstance(rec, dict):
            raise DataError(f"expected a JSON object, got {type(rec).__name__}", file=path, line=lineno)
        pid, response = rec.get("id"), rec.get("response")
        if pid is None or str(pid).strip() == "":
            raise DataError("missing id", file=path, line=lineno, field="id")
        if response is not None and not isinstance(response, str):
            raise DataError(f"response is {type(response).__name__}, expected text", file=path, line=lineno,
                            field="response")
        status = "skipped" if rec.get("status") in ("skipped", "cancelled", "discarded") else (
            "submitted" if (response or "").strip() else "empty")
        prompt = rec.get("prompt")
        item = items.setdefault(str(pid), Item(id=str(pid), prompt=prompt if isinstance(prompt, str) else None,
                                               answers=[], where=f"line {lineno}"))
        item.answers.append(Answer(response=response or "", status=status, annotator=rec.get("annotator"),
                                   submitted_at=rec.get("submitted_at"), where=f"line {lineno}"))
    return list(items.values())


def read_answers(path: Path, fmt: str) -> list[Item]:
    """Items from a tool's export, with a clear error for a missing or empty file."""
    if not path.exists():
        raise TaskdivError(f"{path}: no such file or directory")
    if fmt == "label-studio":
        from . import label_studio

        if path.is_dir():
            raise TaskdivError(f"{path} is a directory; --format label-studio reads the JSON export file")
        items = label_studio.read_export(path)
    elif fmt == "argilla":
        from . import argilla_io

        items = argilla_io.read_export(path)
    else:
        if path.is_dir():
            raise TaskdivError(f"{path} is a directory; --format jsonl reads a .jsonl file")
        items = _read_jsonl_answers(path)
    if not items:
        raise DataError("the export holds no tasks or records", file=path)
    return items


def read_store(path: Path) -> pd.DataFrame:
    """The annotation store (empty frame when it does not exist yet)."""
    columns = SFT_COLUMNS + ["round", "source", "format", "annotator", "submitted_at", "selection"]
    if not path.exists():
        return pd.DataFrame(columns=columns)
    rows = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON in the annotation store ({e.msg})", file=path, line=lineno) from None
        missing = [c for c in SFT_COLUMNS + ["round"] if not isinstance(rec, dict) or c not in rec]
        if missing:
            raise DataError(f"not an annotation store row (missing {missing})", file=path, line=lineno)
        rows.append(rec)
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------- resolving


def _time(value) -> float:
    """A sortable submission time; unknown times sort first."""
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
    by_id: dict[str, list[Item]] = {}
    for item in items:
        by_id.setdefault(item.id, []).append(item)

    unknown = [i for i in by_id if i not in sel.index and i not in latest.index]
    if unknown and not skip_unknown:
        raise DataError(f"{len(unknown)} of {len(by_id)} id(s) are not in the selection {selection_path} "
                        f"nor in the annotation store: {_examples(unknown)}. Is this an export of another "
                        f"selection? (--skip-unknown drops them)", file=source)
    mismatched = []
    for pid, its in by_id.items():
        ref = sel if pid in sel.index else latest if pid in latest.index else None
        if ref is not None and any(it.prompt is not None and it.prompt.strip() != ref.at[pid, "prompt"].strip()
                                   for it in its):
            mismatched.append(pid)
    if mismatched:
        raise DataError(f"{len(mismatched)} prompt(s) differ from the selection's text for the same id: "
                        f"{_examples(mismatched)}. Is this an export of another selection?", file=source)

    report: dict[str, object] = {k: [] for k in (
        "imported", "replaced", "unchanged", "kept_stored", "skipped", "empty", "not_annotated",
        "not_in_export", "unknown", "earlier_round")}
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
            if _time(win.submitted_at) < _time(prev.get("submitted_at")):
                report["kept_stored"].append(pid)
                continue
            report["replaced"].append(pid)
        else:
            report["imported"].append(pid)
        rows.append({"id": pid, "task": base["task"], "prompt": base["prompt"], "response": response,
                     "round": next_round, "source": source, "format": fmt, "annotator": win.annotator,
                     "submitted_at": win.submitted_at, "selection": selection_path})
    report["not_in_export"] = [i for i in sel["id"] if i not in by_id]
    return rows, report


def _examples(ids, n: int = 10) -> str:
    ids = list(ids)
    text = ", ".join(repr(i) for i in ids[:n])
    return text + (f" and {len(ids) - n} more" if len(ids) > n else "")


# ----------------------------------------------------------------------------- writing


def sft_rows(store: pd.DataFrame) -> pd.DataFrame:
    """The SFT dataset: each annotated id once, with its latest stored answer, in first-annotated order."""
    first = store.drop_duplicates("id", keep="first")["id"]
    latest = store.drop_duplicates("id", keep="last").set_index("id")
    return latest.loc[first, SFT_COLUMNS[1:]].reset_index()[SFT_COLUMNS]


def _store_path(cfg: ImportConfig | OracleConfig) -> tuple[Path, Path]:
    out = Path(cfg.out)
    store = Path(cfg.store) if cfg.store else out.parent / STORE_NAME
    if out.suffix != ".jsonl":
        raise TaskdivError(f"--out {out}: the SFT dataset is written as .jsonl")
    if out.resolve() == store.resolve():
        raise TaskdivError(f"--out {out} is the annotation store; write the SFT dataset to another file")
    return out, store


def ingest(items: list[Item], selection: pd.DataFrame, cfg: ImportConfig | OracleConfig, *, source: str, fmt: str,
           selection_path: str, skip_unknown: bool = False) -> dict:
    """Resolve the items against the selection and store, then write store, SFT data and report."""
    out, store_path = _store_path(cfg)
    store = read_store(store_path)
    rows, report = resolve(items, selection, store, source=source, fmt=fmt, selection_path=selection_path,
                           skip_unknown=skip_unknown)
    if not rows and not report["unchanged"] and not report["kept_stored"]:
        raise TaskdivError(
            f"{source}: no answers to import ({len(report['skipped'])} skipped, {len(report['empty'])} empty, "
            f"{len(report['not_annotated'])} not annotated, {len(report['unknown'])} unknown); nothing written")
    full = pd.concat([store, pd.DataFrame(rows, columns=store.columns)], ignore_index=True) if rows else store
    report_path = None
    with contextlib.ExitStack() as stack:
        # All files are written to temporaries first and renamed only once every write succeeded.
        if rows:
            tmp = stack.enter_context(atomic_path(store_path))
            _write_records(tmp, full.to_dict(orient="records"))
            report_path = store_path.parent / f"import-round-{int(rows[0]['round'])}.json"
            tmp = stack.enter_context(atomic_path(report_path))
            tmp.write_text(json.dumps({"source": source, "format": fmt, "selection": selection_path,
                                       "round": int(rows[0]["round"]), **report}, indent=1) + "\n",
                           encoding="utf-8")
        tmp = stack.enter_context(atomic_path(out))
        _write_records(tmp, sft_rows(full).to_dict(orient="records"))
    report.update(round=int(rows[0]["round"]) if rows else None, report_path=report_path, store=store_path,
                  out=out, total=int(full["id"].nunique()))
    return report


def _write_records(path: Path, records) -> None:
    from .fileio import _jsonable

    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(_jsonable(rec), ensure_ascii=False) + "\n")


def print_report(report: dict) -> None:
    labels = [("imported", "new answers"), ("replaced", "replaced an earlier answer"),
              ("unchanged", "already in the store, unchanged"),
              ("kept_stored", "older than the stored answer; kept the stored one"),
              ("earlier_round", "not in this selection but from an earlier round"),
              ("skipped", "skipped by the annotator"), ("empty", "empty answer"),
              ("not_annotated", "in the export without an answer"), ("not_in_export", "selected but not in the export"),
              ("unknown", "not in the selection (dropped)")]
    for key, label in labels:
        ids = report[key]
        if ids:
            print(f"{len(ids):6d} {label}: {_examples(ids)}")
    if report["superseded"]:
        ids = list(report["superseded"])
        print(f"{len(ids):6d} with several answers (the latest submitted was kept): {_examples(ids)}")
    if report["round"] is None:
        print("nothing new to import")
    else:
        print(f"round {report['round']}: appended to {report['store']}; report in {report['report_path']}")
    print(f"wrote {report['total']} annotated prompt(s) to {report['out']}")


# ----------------------------------------------------------------------------- commands


def run_export(cfg: ExportConfig) -> None:
    fmt = check_format(cfg.format)
    rows = read_selection(cfg.selection)
    out = Path(cfg.out)
    if fmt == "label-studio":
        from . import label_studio

        written = label_studio.write_export(out, rows)
    elif fmt == "argilla":
        written = [_write_argilla(out, rows, cfg.name or out.resolve().name)]
    else:
        from .fileio import write_jsonl

        keep = [c for c in ("id", "task", "prompt", "confidence") if c in rows.columns]
        path = out / "prompts.jsonl"
        write_jsonl(path, (dict(r, response="") for r in rows[keep].to_dict(orient="records")))
        written = [path]
    print(f"exported {len(rows)} prompt(s) from {cfg.selection} as {fmt}: {', '.join(map(str, written))}")


def _write_argilla(out: Path, rows: pd.DataFrame, name: str) -> Path:
    """Build the dataset in a temporary directory and swap it into place."""
    from . import argilla_io

    if out.exists() and any(out.iterdir()) and not (out / ".argilla").is_dir():
        raise TaskdivError(f"--out {out} exists and is not an Argilla dataset directory; choose an empty one")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        argilla_io.write_export(work / "dataset", rows, name)
        if out.exists():
            os.replace(out, work / "previous")
        os.replace(work / "dataset", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def run_import(cfg: ImportConfig) -> None:
    fmt = check_format(cfg.format)
    selection = read_selection(cfg.selection)
    items = read_answers(Path(cfg.file), fmt)
    report = ingest(items, selection, cfg, source=str(cfg.file), fmt=fmt, selection_path=str(cfg.selection),
                    skip_unknown=cfg.skip_unknown)
    print_report(report)


def run_oracle(cfg: OracleConfig) -> None:
    selection = read_selection(cfg.selection)
    pool = load_pool(cfg.pool, FieldMap(**{k: getattr(cfg, k) for k in FieldMap.__dataclass_fields__}))
    frame = pool.frame.set_index("id", drop=False)
    ids = selection["id"].tolist()
    missing = [i for i in ids if i not in frame.index]
    if missing:
        raise DataError(f"{len(missing)} selected id(s) are not in the pool: {_examples(missing)}; "
                        f"was the selection made from another pool?", file=cfg.selection)
    responses = frame["response"].reindex(ids) if "response" in frame.columns else pd.Series(index=ids, dtype=object)
    blank = [i for i, r in zip(ids, responses) if not isinstance(r, str) or not r.strip()]
    if blank:
        raise DataError(f"{len(blank)} selected prompt(s) have no reference response in the pool: "
                        f"{_examples(blank)}", file=cfg.pool, field=cfg.response_field)
    items = [Item(id=i, prompt=frame.at[i, "prompt"], answers=[Answer(r, "submitted", annotator="oracle")])
             for i, r in zip(ids, responses)]
    report = ingest(items, selection, cfg, source=str(cfg.pool), fmt="oracle", selection_path=str(cfg.selection))
    print_report(report)
