"""Errors taskdiv reports to the user without a traceback.

The CLI catches `TaskdivError`, prints its message and exits non-zero. `DataError`
carries where the problem is (file, line or row, field) so every message about bad
input names the place to look. `errno_in` finds the system's error behind a library's message.
"""
from __future__ import annotations

import difflib
import re


class TaskdivError(Exception):
    """A problem with the user's input or environment (not a bug in taskdiv)."""


class DataError(TaskdivError):
    """Bad input data, located by file, line/row and field."""

    def __init__(self, message: str, *, file=None, line: int | None = None,
                 row: int | None = None, field: str | None = None):
        self.file, self.line, self.row, self.field = file, line, row, field
        where = []
        if file is not None:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


def unknown_name(kind: str, name: str, known) -> TaskdivError:
    """An error for a name missing from a registry, with 'did you mean' suggestions."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return TaskdivError(f"unknown {kind} {name!r}.{hint} Known: {', '.join(known)}.")


def errno_in(text: str) -> int | None:
    """The errno a library gives only in its message: Arrow's 'Detail: [errno 28] No space left on
    device', safetensors' 'I/O error: No space left on device (os error 28)'; None if none.

    >>> errno_in("I/O error: No space left on device (os error 28)")
    28
    """
    m = re.search(r"\[errno (\d+)\]|\(os error (\d+)\)", text, re.IGNORECASE)
    return int(m[1] or m[2]) if m else None
