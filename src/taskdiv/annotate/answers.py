"""What annotators return, and the selection they answer.

Every format's reader produces `Item`s with their `Answer`s; the store resolves them
against the rows `read_selection` returns. Nothing else of the annotate package is
imported here, so the formats and the store depend on this module and on no other.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..common.errors import DataError, TaskdivError
from ..pool.fields import FieldMap
from ..pool.normalise import normalise
from ..pool.readers import read_raw


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


def submission_time(value, *, file, field: str, line: int | None = None, row: int | None = None):
    """A submission time as read from an export: None (none given), or text that is a date and time
    the store can order answers by. Anything else is a DataError naming file, line or row and
    field; before, it sorted as 'no time' and an old answer could replace a newer one. A number
    (12345) is refused too: pandas would read it as nanoseconds after 1970."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            if not pd.isna(pd.Timestamp(value)):
                return value
        except (ValueError, TypeError):
            pass
    raise DataError(f"{value!r} is not a date and time (ISO 8601, e.g. 2026-01-31T12:00:00Z)", file=file,
                    line=line, row=row, field=field)


def read_selection(path) -> pd.DataFrame:
    """The selection's rows (id, task, prompt, and confidence when scored), validated."""
    path = Path(path)
    if not path.exists():
        raise TaskdivError(f"{path}: no such selection file")
    if path.suffix != ".jsonl":
        raise TaskdivError(f"{path}: expected the selection.jsonl written by `taskdiv select`")
    raw, where = read_raw(path)
    if len(raw) == 0:
        raise DataError("the selection is empty", file=path)
    if "id" not in raw.columns:
        raise DataError("no 'id' column: not a selection written by `taskdiv select`", file=path)
    frame = normalise(raw, FieldMap(), source=str(path), where=where)
    if "confidence" in raw.columns:
        frame["confidence"] = pd.to_numeric(raw["confidence"], errors="coerce").to_numpy()
    return frame
