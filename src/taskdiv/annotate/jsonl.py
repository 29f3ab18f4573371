"""Plain JSONL, for any tool: prompts.jsonl out (id, task, prompt, confidence, and an empty
response to fill), one answer a line back (id, response; optionally status: submitted, or
skipped, cancelled or discarded; annotator; submitted_at, an ISO 8601 time; prompt)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..common.errors import DataError, TaskdivError
from ..common.inputs import iter_jsonl
from ..common.outputs import check_output_dir
from ..common.writers import write_jsonl
from .answers import Answer, Item, submission_time

FILE = "prompts.jsonl"
# The statuses an answer line may carry (none: an answer); the last three skip the prompt.
STATUSES = ("submitted", "skipped", "cancelled", "discarded")
SKIPPED = STATUSES[1:]


def check_out(out: Path, inputs=()) -> None:
    check_output_dir(out, [FILE], inputs=inputs)


def write(out: Path, rows: pd.DataFrame, name: str | None = None) -> list[Path]:
    keep = [c for c in ("id", "task", "prompt", "confidence") if c in rows.columns]
    path = out / FILE
    write_jsonl(path, (dict(r, response="") for r in rows[keep].to_dict(orient="records")))
    return [path]


def read(path: Path) -> list[Item]:
    """Items from JSONL: one answer a line."""
    if path.is_dir():
        raise TaskdivError(f"{path} is a directory; --format jsonl reads a .jsonl file")
    items: dict[str, Item] = {}
    for lineno, rec in iter_jsonl(path):
        pid, response = rec.get("id"), rec.get("response")
        if pid is None or str(pid).strip() == "":
            raise DataError("missing id", file=path, line=lineno, field="id")
        if response is not None and not isinstance(response, str):
            raise DataError(f"response is {type(response).__name__}, expected text", file=path, line=lineno,
                            field="response")
        status = rec.get("status")
        if status is not None and status not in STATUSES:
            raise DataError(f"status {status!r} is none of {', '.join(STATUSES)}", file=path, line=lineno,
                            field="status")
        status = "skipped" if status in SKIPPED else "submitted" if (response or "").strip() else "empty"
        prompt = rec.get("prompt")
        item = items.setdefault(str(pid), Item(id=str(pid), prompt=prompt if isinstance(prompt, str) else None,
                                               answers=[], where=f"line {lineno}"))
        item.answers.append(Answer(response=response or "", status=status, annotator=rec.get("annotator"),
                                   submitted_at=submission_time(rec.get("submitted_at"), file=path, line=lineno,
                                                                field="submitted_at"),
                                   where=f"line {lineno}"))
    if not items:  # every non-blank line makes an item
        raise DataError("the file is empty", file=path)
    return list(items.values())
