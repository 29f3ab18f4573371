"""The annotation round trip: send selected prompts to annotators and take their answers back.

    taskdiv annotate export SELECTION --format label-studio|argilla|jsonl --out DIR
    taskdiv annotate import FILE --format label-studio|argilla|jsonl --selection SELECTION --out DATA.jsonl
    taskdiv annotate oracle SELECTION --pool POOL --out DATA.jsonl

Import, and oracle (which answers from the pool's reference responses), hand the answers
to the annotation store: it appends them to `annotations.jsonl` beside DATA.jsonl,
rewrites DATA.jsonl (the SFT dataset `taskdiv train` reads: id, task, prompt, response;
all rounds) and reports every id. The store has an `id` column, so
`taskdiv select --exclude DIR/annotations.jsonl` skips annotated prompts next round.

Modules; imports run one way, answers -> formats and store -> this registry -> commands:
    answers.py       Answer and Item (what an export holds), read_selection
    store.py         the annotation store: rounds, the rules (its docstring), the report
    label_studio.py  Label Studio: tasks.json + config.xml out, the JSON export back
    argilla.py       Argilla 2.x datasets on disk (the optional argilla SDK)
    jsonl.py         plain JSONL
    commands.py      export / import / oracle, which reach the formats through FORMATS only

A format is a module with `check_out(out, inputs)` (before any work; no output may be one of
the `inputs`), `write(out, rows, name) -> written paths` and `read(path) -> [Item]`. Adding a
tool is one module and one entry in FORMATS; tests/test_annotation.py runs one round-trip contract over every entry.
"""
from __future__ import annotations

from types import ModuleType

from ..common.errors import unknown_name
from . import argilla, jsonl, label_studio

FORMATS: dict[str, ModuleType] = {"label-studio": label_studio, "argilla": argilla, "jsonl": jsonl}


def get_format(name: str) -> ModuleType:
    """The format module registered as `name`; unknown names fail with 'did you mean'."""
    if name not in FORMATS:
        raise unknown_name("annotation format", name, FORMATS)
    return FORMATS[name]
