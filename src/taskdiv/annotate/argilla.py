"""Argilla 2.x datasets on disk: the dataset taskdiv exports and the reader for the
annotated dataset coming back.

    taskdiv annotate export runs/sel/selection.jsonl --format argilla --out runs/ar
    # with a server:  rg.Dataset.from_disk("runs/ar", client=client)
    # annotate, then: dataset.to_disk("annotated")
    taskdiv annotate import annotated --format argilla --selection runs/sel/selection.jsonl \\
        --out runs/ann/sft.jsonl

The dataset is built with the SDK's own classes: `rg.Settings` with a TextField
`prompt`, a TextQuestion `response`, metadata properties `task` (terms) and
`confidence` (float), and one `rg.Record` per prompt whose id is taskdiv's prompt id.
It is written in the layout `Dataset.to_disk` produces (.argilla/dataset.json,
.argilla/settings.json, records.json), which `Dataset.from_disk` loads onto a server.

Why not `Dataset.to_disk` alone: in argilla 2.8 every SDK object needs a client,
the client checks its server on creation, and `to_disk` reads the records back from
the server. taskdiv writes without a server: a client whose connection check is
skipped (it is never asked to send a request), `Dataset.to_disk(with_records=False)`
for the dataset model and settings, and the SDK's record serialiser (`JsonIO.to_json`,
which `to_disk` itself calls) for records.json.
"""
from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import pandas as pd

from ..common.atomic import atomic_dir
from ..common.errors import DataError, TaskdivError
from ..common.inputs import read_json_document
from ..common.outputs import check_output_dir
from ..common.packages import require
from .answers import Answer, Item, submission_time

FIELD, QUESTION = "prompt", "response"


def _import_argilla():
    return require("argilla", "annotate")


@contextlib.contextmanager
def offline_client():
    """An `rg.Argilla` client for building and serialising objects without a server.

    It is made the SDK's default client while the block runs (SDK classes such as
    `Settings.from_json` look the default up) and the previous default is restored.
    """
    rg = _import_argilla()

    class OfflineArgilla(rg.Argilla):
        def _validate_connection(self) -> None:
            pass  # no server: this client only serves as the objects' owner

    previous = rg.Argilla._default_client
    client = OfflineArgilla(api_url="http://127.0.0.1:6900", api_key="offline")
    rg.Argilla._set_default(client)
    try:
        yield client
    finally:
        rg.Argilla._set_default(previous)


def _drop_info(record: logging.LogRecord) -> bool:
    return record.levelno > logging.INFO


@contextlib.contextmanager
def _quiet_sdk():
    """Drop the SDK's INFO messages ('Loading ... from', logged on the root logger while saving),
    for this block only and for the root logger's own records only: a filter on the root
    logger does not see records of other loggers. The NullHandler keeps `logging.info` from
    configuring the root logger (it calls basicConfig when the root has no handler); both
    are removed afterwards."""
    root = logging.getLogger()
    handler = logging.NullHandler()
    root.addHandler(handler)
    root.addFilter(_drop_info)
    try:
        yield
    finally:
        root.removeFilter(_drop_info)
        root.removeHandler(handler)


def settings(tasks: list[str], with_confidence: bool):
    """The dataset settings (call inside `offline_client()` or with a real client)."""
    rg = _import_argilla()
    metadata = [rg.TermsMetadataProperty(name="task", title="Task", options=sorted(tasks))]
    if with_confidence:
        metadata.append(rg.FloatMetadataProperty(name="confidence", title="Model confidence",
                                                 min=0.0, max=1.0))
    return rg.Settings(
        guidelines="Write the response a good assistant would give to the prompt. "
                   "The task and the base model's confidence are shown as metadata.",
        fields=[rg.TextField(name=FIELD, title="Prompt", use_markdown=False)],
        questions=[rg.TextQuestion(name=QUESTION, title="Your response", required=True, use_markdown=False)],
        metadata=metadata,
        allow_extra_metadata=False,
    )


def records(rows: pd.DataFrame) -> list:
    rg = _import_argilla()
    out = []
    for rec in rows.to_dict(orient="records"):
        meta = {"task": rec["task"]}
        conf = rec.get("confidence")
        if conf is not None and not (isinstance(conf, float) and math.isnan(conf)):
            meta["confidence"] = float(conf)
        out.append(rg.Record(id=rec["id"], fields={FIELD: rec["prompt"]}, metadata=meta))
    return out


def check_out(out: Path, inputs=()) -> None:
    """`out` must be new, empty, or an Argilla dataset directory (which the export replaces, so no
    input may lie inside it); the dataset is built beside it and renamed onto it, so its parent
    must be writable too."""
    check_output_dir(out, inputs=inputs, whole=True)
    check_output_dir(out.parent)
    if out.exists() and (not out.is_dir() or any(out.iterdir()) and not (out / ".argilla").is_dir()):
        raise TaskdivError(f"--out {out} exists and is not an Argilla dataset directory; choose an empty one")


def write(out: Path, rows: pd.DataFrame, name: str | None = None) -> list[Path]:
    """The dataset (named `name`, default: the directory's name), built in a staging
    directory and swapped into place."""
    check_out(out)
    with atomic_dir(out) as staging:
        write_dataset(staging, rows, name or out.resolve().name)
    return [out]


def write_dataset(out_dir: Path, rows: pd.DataFrame, name: str) -> Path:
    """Write the dataset into `out_dir`, a new or empty directory."""
    rg = _import_argilla()
    from argilla.records._io import JsonIO

    out_dir.mkdir(parents=True, exist_ok=True)
    with offline_client(), _quiet_sdk():
        ds = rg.Dataset(name=name, settings=settings(rows["task"].unique().tolist(), "confidence" in rows.columns),
                        workspace=rg.Workspace(name="argilla"))
        ds.to_disk(str(out_dir), with_records=False)
        JsonIO.to_json(records(rows), out_dir / ds._DEFAULT_RECORDS_PATH)
    return out_dir


# ----------------------------------------------------------------------------- import


def read(path: Path) -> list[Item]:
    """Items from a dataset saved with `Dataset.to_disk` (or its records.json).

    Each record becomes one item; each response to the `response` question one answer.
    The records file keeps a response's value and user but not its status, so a blank
    or missing value counts as 'empty' (Argilla keeps no value for a discarded text answer);
    a `status` other than 'submitted', where an export carries one, counts as 'skipped'.
    """
    records_path = path / "records.json" if path.is_dir() else path
    if not records_path.exists():
        raise DataError("no records.json: not a dataset saved with Argilla's Dataset.to_disk "
                        "(save it with with_records=True)", file=path)
    data = read_json_document(records_path)
    if not isinstance(data, list):
        raise DataError("not an Argilla records file: expected a list of records", file=records_path)
    items = []
    for n, rec in enumerate(data, 1):
        if not isinstance(rec, dict) or not isinstance(rec.get("fields"), dict):
            raise DataError("not an Argilla record: expected an object with 'fields'", file=records_path, row=n)
        pid = rec.get("id")
        if pid is None or str(pid).strip() == "":
            raise DataError("record has no id (was it created from taskdiv's export?)",
                            file=records_path, row=n, field="id")
        where = f"record {pid}"
        responses = (rec.get("responses") or {})
        if not isinstance(responses, dict):
            raise DataError(f"{where}: 'responses' is not an object", file=records_path, row=n, field="responses")
        answers = []
        for k, resp in enumerate(responses.get(QUESTION) or [], 1):
            if not isinstance(resp, dict):
                raise DataError(f"{where}: response {k} is not an object", file=records_path, row=n,
                                field=f"responses.{QUESTION}")
            value = resp.get("value")
            if value is not None and not isinstance(value, str):
                raise DataError(f"{where}: response {k} is {type(value).__name__}, expected text",
                                file=records_path, row=n, field=f"responses.{QUESTION}")
            status = resp.get("status") or "submitted"
            if status != "submitted":
                status = "skipped"
            elif not (value or "").strip():
                status = "empty"
            answers.append(Answer(response=value or "", status=status, annotator=resp.get("user_id"),
                                  submitted_at=submission_time(resp.get("updated_at"), file=records_path, row=n,
                                                               field=f"responses.{QUESTION}[{k - 1}].updated_at"),
                                  where=f"{where}, response {k}"))
        prompt = rec["fields"].get(FIELD)
        items.append(Item(id=str(pid), prompt=prompt if isinstance(prompt, str) else None, answers=answers,
                          where=where))
    return items
