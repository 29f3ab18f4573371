"""`taskdiv annotate export|import|oracle`: the commands, their configs, and nothing
format-specific: every format is reached through `FORMATS` (see the package docstring).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..common.errors import DataError, TaskdivError
from ..pool.fields import FieldMap
from ..pool.load import load_pool
from . import FORMATS, get_format
from .answers import Answer, Item, read_selection
from .store import STORE_NAME, examples, ingest, print_report, store_paths

log = logging.getLogger(__name__)


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
    format: str | None = _format_field(f"Format of FILE: {', '.join(FORMATS)}.")
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


# ----------------------------------------------------------------------------- reading


def read_answers(path: Path, fmt: str) -> list[Item]:
    """Items from a tool's export, with a clear error for a missing or empty file."""
    if not path.exists():
        raise TaskdivError(f"{path}: no such file or directory")
    items = get_format(fmt).read(path)
    if not items:
        raise DataError("the export holds no tasks or records", file=path)
    return items


# ----------------------------------------------------------------------------- commands


def run_export(cfg: ExportConfig) -> None:
    fmt = get_format(cfg.format)
    out = Path(cfg.out)
    fmt.check_out(out, inputs=[cfg.selection])
    rows = read_selection(cfg.selection)
    written = fmt.write(out, rows, cfg.name)
    print(f"exported {len(rows)} prompt(s) from {cfg.selection} as {cfg.format}: {', '.join(map(str, written))}")


def run_import(cfg: ImportConfig) -> None:
    get_format(cfg.format)
    store_paths(cfg.out, cfg.store, inputs=[cfg.file, cfg.selection])  # checked before reading anything
    selection = read_selection(cfg.selection)
    items = read_answers(Path(cfg.file), cfg.format)
    report = ingest(items, selection, cfg.out, cfg.store, source=str(cfg.file), fmt=cfg.format,
                    selection_path=str(cfg.selection), skip_unknown=cfg.skip_unknown)
    print_report(report)


def run_oracle(cfg: OracleConfig) -> None:
    store_paths(cfg.out, cfg.store, inputs=[cfg.selection, cfg.pool])
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
    report = ingest(items, selection, cfg.out, cfg.store, source=str(cfg.pool), fmt="oracle",
                    selection_path=str(cfg.selection))
    print_report(report)
