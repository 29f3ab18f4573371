"""Which source fields hold a pool's columns (`FieldMap`), and the POOL argument every
command that reads a pool takes (`PoolOptions`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class FieldMap:
    """Which source fields hold the id, prompt, task and response."""

    id_field: str = field(default="id", metadata={
        "help": "Source field holding the prompt id (generated when absent)."})
    prompt_field: str = field(default="prompt", metadata={"help": "Source field holding the prompt text."})
    task_field: str = field(default="task", metadata={"help": "Source field holding the task label (Dolly: category)."})
    response_field: str = field(default="response", metadata={"help": "Source field holding the reference response."})
    prompt_template: str | None = field(default=None, metadata={
        "help": "Build the prompt from several fields, e.g. '{instruction}\\n\\n{context}' for Dolly. "
                "Empty fields and the separators around them are dropped. \\n, \\t and \\\\ are read as "
                "newline, tab and backslash, on the command line as in YAML."})

    def field_map(self) -> "FieldMap":
        """Just the field mapping of a config that extends FieldMap (PoolOptions, OracleConfig)."""
        return FieldMap(**{f.name: getattr(self, f.name) for f in dataclasses.fields(FieldMap)})


@dataclass
class PoolOptions(FieldMap):
    """The POOL argument and its field mapping: the options of every command that reads a pool."""

    pool: str | None = field(default=None, metadata={
        "positional": True, "required": True,
        "help": "The pool: a .jsonl/.json/.csv/.parquet file, a save_to_disk directory, "
                "hf:NAME?config=C&split=S, a benchmark preset or collection (bench:many, bench:demo, "
                "mmlu:SUBJECTS, bbh:TASKS, gauntlet:TASKS; ?split=pool|test) or bigbench:TASKS (see README)."})
