"""`taskdiv annotate`: send selected prompts to annotators and take their answers back.

    taskdiv annotate export SELECTION --format label-studio|argilla|jsonl --out DIR
    taskdiv annotate import FILE --format label-studio|argilla|jsonl --selection SELECTION --out DATA.jsonl
    taskdiv annotate oracle SELECTION --pool POOL --out DATA.jsonl

This module owns the configs, the commands and the readers of the answers (the tool
formats live in label_studio.py and argilla_io.py). Import, and oracle (which answers
from the pool's reference responses), hand the answers to annotation_store.py: it
appends them to `annotations.jsonl` beside DATA.jsonl, rewrites DATA.jsonl (the SFT
dataset `taskdiv train` reads: id, task, prompt, response; all rounds) and reports
every id; its docstring states the rules. The store has an `id` column, so
`taskdiv select --exclude DIR/annotations.jsonl` skips annotated prompts next round.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .annotation_answers import Answer, Item
from .annotation_store import STORE_NAME, examples, ingest, print_report, store_paths
from . import data
from .data import FieldMap, load_pool
from .errors import DataError, TaskdivError, unknown_name
from .fileio import atomic_dir, check_output_dir, iter_jsonl

log = logging.getLogger(__name__)

FORMATS = ("label-studio", "argilla", "jsonl")


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


def read_selection(path) -> pd.DataFrame:
    """The selection's rows (id, task, prompt, and confidence when scored), validated."""
    path = Path(path)
    if not path.exists():
        raise TaskdivError(f"{path}: no such selection file")
    if path.suffix != ".jsonl":
        raise TaskdivError(f"{path}: expected the selection.jsonl written by `taskdiv select`")
    raw, where = data.read_raw(path)
    if len(raw) == 0:
        raise DataError("the selection is empty", file=path)
    if "id" not in raw.columns:
        raise DataError("no 'id' column: not a selection written by `taskdiv select`", file=path)
    frame = data.normalise(raw, FieldMap(), source=str(path), where=where)
    if "confidence" in raw.columns:
        frame["confidence"] = pd.to_numeric(raw["confidence"], errors="coerce").to_numpy()
    return frame


def _read_jsonl_answers(path: Path) -> list[Item]:
    """Items from JSONL: one answer a line, with `id` and `response` (and optionally
    `status` ('skipped' for a skipped prompt), `annotator`, `submitted_at`, `prompt`)."""
    items: dict[str, Item] = {}
    for lineno, rec in iter_jsonl(path):
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
    if not items:  # every non-blank line makes an item
        raise DataError("the file is empty", file=path)
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


# ----------------------------------------------------------------------------- commands


def run_export(cfg: ExportConfig) -> None:
    fmt = check_format(cfg.format)
    out = Path(cfg.out)
    if fmt == "label-studio":
        from .label_studio import EXPORT_FILES

        check_output_dir(out, EXPORT_FILES)
    elif fmt == "argilla":
        check_output_dir(out)
        check_output_dir(out.parent)  # the dataset is built beside OUT and renamed onto it
    else:
        check_output_dir(out, ["prompts.jsonl"])
    rows = read_selection(cfg.selection)
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
    """Build the dataset in a staging directory and swap it into place."""
    from . import argilla_io

    if out.exists() and (not out.is_dir() or any(out.iterdir()) and not (out / ".argilla").is_dir()):
        raise TaskdivError(f"--out {out} exists and is not an Argilla dataset directory; choose an empty one")
    with atomic_dir(out) as staging:
        argilla_io.write_export(staging, rows, name)
    return out


def run_import(cfg: ImportConfig) -> None:
    fmt = check_format(cfg.format)
    store_paths(cfg.out, cfg.store)  # the outputs are writable: checked before reading anything
    selection = read_selection(cfg.selection)
    items = read_answers(Path(cfg.file), fmt)
    report = ingest(items, selection, cfg.out, cfg.store, source=str(cfg.file), fmt=fmt, selection_path=str(cfg.selection),
                    skip_unknown=cfg.skip_unknown)
    print_report(report)


def run_oracle(cfg: OracleConfig) -> None:
    store_paths(cfg.out, cfg.store)
    selection = read_selection(cfg.selection)
    pool = load_pool(cfg.pool, cfg.field_map())
    frame = pool.frame.set_index("id", drop=False)
    ids = selection["id"].tolist()
    missing = [i for i in ids if i not in frame.index]
    if missing:
        raise DataError(f"{len(missing)} selected id(s) are not in the pool: {examples(missing)}; "
                        f"was the selection made from another pool?", file=cfg.selection)
    responses = frame["response"].reindex(ids) if "response" in frame.columns else pd.Series(index=ids, dtype=object)
    blank = [i for i, r in zip(ids, responses) if not isinstance(r, str) or not r.strip()]
    if blank:
        raise DataError(f"{len(blank)} selected prompt(s) have no reference response in the pool: "
                        f"{examples(blank)}", file=cfg.pool, field=cfg.response_field)
    items = [Item(id=i, prompt=frame.at[i, "prompt"], answers=[Answer(r, "submitted", annotator="oracle")])
             for i, r in zip(ids, responses)]
    report = ingest(items, selection, cfg.out, cfg.store, source=str(cfg.pool), fmt="oracle", selection_path=str(cfg.selection))
    print_report(report)
