"""Label Studio files: the tasks file and labeling configuration taskdiv exports, and
the reader for Label Studio's JSON export of those tasks with their annotations.

    taskdiv annotate export runs/sel/selection.jsonl --format label-studio --out runs/ls
    # Label Studio: create a project with runs/ls/config.xml as its labeling
    # interface, import runs/ls/tasks.json, annotate, then Export -> JSON (the full
    # format, with annotations):
    taskdiv annotate import export.json --format label-studio --selection runs/sel/selection.jsonl \\
        --out runs/ann/sft.jsonl

Each task's `data` carries taskdiv's prompt id (`id`), so the answers join back to the
selection whatever ids Label Studio gives its tasks.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pandas as pd

from ..common.atomic import output_set
from ..common.errors import DataError, TaskdivError
from ..common.inputs import check_input, read_json_document
from ..common.outputs import check_output_dir
from .answers import Answer, Item, submission_time

# Names of the control and object tags in the labeling configuration; the reader
# looks for the answer under RESPONSE_TAG.
RESPONSE_TAG = "response"
PROMPT_TAG = "prompt"
EXPORT_FILES = ("tasks.json", "config.xml")


def labeling_config(with_confidence: bool) -> str:
    """The labeling interface: task and confidence as metadata, the prompt, a free-text answer.

    Label Studio checks on import that every task has the data keys the config names,
    so the confidence row is only there when the selection was scored.
    """
    meta = ['    <Text name="task" value="$task"/>']
    if with_confidence:
        meta += ['    <Header value="Model confidence (mean token probability)" size="6"/>',
                 '    <Text name="confidence" value="$confidence_text"/>']
    return "\n".join([
        "<View>",
        '  <View style="padding: 0 1em; margin-bottom: 1em; background: #f5f5f5; border-radius: 4px">',
        '    <Header value="Task" size="6"/>',
        *meta,
        "  </View>",
        '  <Header value="Prompt"/>',
        f'  <Text name="{PROMPT_TAG}" value="$prompt"/>',
        '  <Header value="Your response"/>',
        f'  <TextArea name="{RESPONSE_TAG}" toName="{PROMPT_TAG}" rows="8" editable="true"',
        '            maxSubmissions="1" required="true" showSubmitButton="false"',
        f'            placeholder={quoteattr("Write the answer a good assistant would give.")}/>',
        "</View>",
        "",
    ])


def tasks(rows: pd.DataFrame) -> list[dict]:
    """Label Studio tasks, one per selected prompt, in the selection's order."""
    with_conf = "confidence" in rows.columns
    out = []
    for rec in rows.to_dict(orient="records"):
        data = {"id": rec["id"], "task": rec["task"], "prompt": rec["prompt"]}
        if with_conf:
            conf = rec.get("confidence")
            ok = conf is not None and not (isinstance(conf, float) and math.isnan(conf))
            data["confidence"] = float(conf) if ok else None
            data["confidence_text"] = f"{conf:.3f}" if ok else "not scored"
        out.append({"data": data})
    return out


# ----------------------------------------------------------------------------- import


def read(path: Path) -> list[Item]:
    """Items from Label Studio's JSON export of a project.

    Each task becomes one item; each of its annotations one answer. A cancelled
    annotation (the annotator pressed Skip) is 'skipped'; one whose response text is
    blank is 'empty'. Drafts are not annotations and are not read.
    """
    if path.is_dir():
        raise TaskdivError(f"{path} is a directory; --format label-studio reads the JSON export file")
    check_input(path, kind="JSON document")  # before the first read: /dev/zero, a pipe
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head and head[:1] not in (b"[", b"{"):  # Label Studio's CSV or TSV export, or another file
        raise DataError("not a Label Studio JSON export: it does not start with '[' (is it the CSV or TSV "
                        "export?); export the project with the JSON format, not CSV, TSV or JSON_MIN", file=path)
    data = read_json_document(path)
    if not isinstance(data, list):
        raise DataError("not a Label Studio JSON export: expected a list of tasks "
                        "(export the project with the JSON format, not JSON_MIN or CSV)", file=path)
    items = []
    for n, task in enumerate(data, 1):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise DataError("not a Label Studio task: expected an object with 'data' "
                            "(export the project with the JSON format)", file=path, row=n)
        where = f"task {task.get('id', n)}"
        pid = task["data"].get("id")
        if pid is None or str(pid).strip() == "":
            raise DataError(f"{where} has no data.id (was it imported from taskdiv's tasks.json?)",
                            file=path, row=n, field="data.id")
        annotations = task.get("annotations", [])
        if not isinstance(annotations, list):
            raise DataError(f"{where}: 'annotations' is not a list", file=path, row=n, field="annotations")
        answers = []
        for k, ann in enumerate(annotations, 1):
            if not isinstance(ann, dict):
                raise DataError(f"{where}: annotation {k} is not an object", file=path, row=n, field="annotations")
            text = _response_text(ann, path, n, where)
            status = "skipped" if ann.get("was_cancelled") else ("submitted" if text.strip() else "empty")
            answers.append(Answer(
                response=text, status=status, annotator=_annotator(ann.get("completed_by")),
                submitted_at=submission_time(ann.get("updated_at") or ann.get("created_at"), file=path, row=n,
                                             field=f"annotations[{k - 1}]."
                                                   + ("updated_at" if ann.get("updated_at") else "created_at")),
                where=f"{where}, annotation {ann.get('id', k)}"))
        prompt = task["data"].get("prompt")
        items.append(Item(id=str(pid), prompt=prompt if isinstance(prompt, str) else None, answers=answers,
                          where=where))
    _check_response_tag(data, path)
    return items


def _check_response_tag(data: list, path: Path) -> None:
    """Refuse an export whose answers all sit in a control not named `response` (a labeling
    config of one's own, or a template): read as empty answers, they would vanish unseen."""
    names = {}
    for task in data:
        for ann in task.get("annotations", []):
            for res in ann.get("result") or []:
                if isinstance(res, dict):
                    names.setdefault(res.get("from_name"), None)
    if names and RESPONSE_TAG not in names:
        found = ", ".join(repr(n) for n in names)
        raise DataError(f"no annotation has a result from a control named {RESPONSE_TAG!r}, the TextArea of "
                        f"taskdiv's config.xml; the results come from {found}. Rename that TextArea to "
                        f"name=\"{RESPONSE_TAG}\" in the labeling config (or start from `taskdiv annotate export`'s "
                        f"config.xml) and export again", file=path)


def _response_text(ann: dict, path: Path, n: int, where: str) -> str:
    """The text typed into the response TextArea ('' when there is none)."""
    results = ann.get("result") or []
    if not isinstance(results, list):
        raise DataError(f"{where}: annotation 'result' is not a list", file=path, row=n, field="result")
    texts = []
    for res in results:
        if not isinstance(res, dict) or res.get("from_name") != RESPONSE_TAG:
            continue
        value = res.get("value") or {}
        text = value.get("text") if isinstance(value, dict) else None
        if isinstance(text, str):
            text = [text]
        if not isinstance(text, list) or not all(isinstance(t, str) for t in text):
            raise DataError(f"{where}: the '{RESPONSE_TAG}' result has no text list (value.text)",
                            file=path, row=n, field="result")
        texts.extend(text)
    # A TextArea may hold several entries; they form one answer, one per line.
    return "\n".join(texts)


def _annotator(completed_by) -> str | None:
    if isinstance(completed_by, dict):  # the export's expanded user object
        return str(completed_by.get("email") or completed_by.get("id"))
    return None if completed_by is None else str(completed_by)


def check_out(out: Path, inputs=()) -> None:
    check_output_dir(out, EXPORT_FILES, inputs=inputs)


def write(out_dir: Path, rows: pd.DataFrame, name: str | None = None) -> list[Path]:
    """Write tasks.json and config.xml into out_dir, as one unit (atomic.output_set)."""
    with_conf = "confidence" in rows.columns
    paths = [out_dir / name for name in EXPORT_FILES]
    with output_set(*paths) as (tasks_tmp, config_tmp):
        tasks_tmp.write_text(json.dumps(tasks(rows), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        config_tmp.write_text(labeling_config(with_conf), encoding="utf-8")
    return paths
