"""What annotators return: an `Item` (one exported prompt) and its `Answer`s.

Every tool's reader (label_studio.py, argilla_io.py, the plain JSONL reader) produces
these, and the annotation store resolves them; this module imports nothing else of
taskdiv, so the readers and the store need not import the commands module.
"""
from __future__ import annotations

from dataclasses import dataclass


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
