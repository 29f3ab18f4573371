"""Resumable record files: a key line, then one JSON record per line, appended and flushed as
work finishes, so a killed run resumes where it stopped.
"""
from __future__ import annotations

import json
from pathlib import Path


def read_partial(partial: Path, key: str) -> dict[str, dict]:
    """The records of a resumable file ({"key": ...} and then one record with an "id" per
    line) written by a previous run with the same key, up to the first damaged line.

    A header that cannot be read counts as another key: the file is started afresh.
    """
    if not partial.exists():
        return {}
    lines = partial.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for ln in lines:
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:
            break  # a line cut off by the interruption
        if not isinstance(rec, dict):
            break
        records.append(rec)
    if not records or records[0].get("key") != key:
        return {}
    return {rec["id"]: rec for rec in records[1:] if "id" in rec}


def append_partial(sink, recs, done, progress) -> None:
    """Append records to a partial file (one JSON line each, flushed), note them in `done`
    ({id: record}) and advance `progress`."""
    sink.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    sink.flush()
    for r in recs:
        done[r["id"]] = r
    progress.update(len(recs))
