"""A raw source table mapped onto the pool's columns and checked row by row.

Field names are mapped with `FieldMap` (or a `--prompt-template`); the Alpaca
(instruction/input/output) and chat (messages or ShareGPT conversations) shapes are
recognised without mapping. Ids are checked unique, or generated from task and prompt.
"""
from __future__ import annotations

import logging
import re
import string

import numpy as np
import pandas as pd

from ..common.errors import DataError
from .checks import _NUMBER_KINDS, _blank, _check_text, _check_types, _kind
from .container import _dictionary, _sorted_codes, arrow_text, id_ranks, stable_id, task_codes
from .fields import FieldMap

log = logging.getLogger(__name__)


OPTIONAL_COLUMNS = ("response", "choices", "targets")


def _source_fields(columns) -> list[str]:
    """A source's field names for error messages (without the line numbers taskdiv adds)."""
    return sorted(c for c in columns if c != "__line__")


def _detect_shape(columns, fields: FieldMap) -> str:
    if fields.prompt_template or fields.prompt_field in columns:
        return "mapped"
    if "instruction" in columns and "output" in columns:
        return "alpaca"
    if "messages" in columns or "conversations" in columns:
        return "chat"
    return "mapped"


def normalise(raw: pd.DataFrame, fields: FieldMap, *, source: str, where: str = "row",
              require_tasks: bool = True) -> pd.DataFrame:
    """Map a raw source table onto the pool columns and validate every row."""
    return _normalise(raw, fields, source=source, where=where, require_tasks=require_tasks)[0]


def _normalise(raw: pd.DataFrame, fields: FieldMap, *, source: str, where: str,
               require_tasks: bool) -> tuple[pd.DataFrame, np.ndarray | None, tuple | None]:
    """normalise(), the ranks of the ids (Pool.id_rank) that the uniqueness check of given
    ids computes on the way (None for generated ids), and the task codes (Pool.codes).

    The ids are ranked in a second thread (Arrow's sort lets go of the GIL) while this one
    checks the prompts and tasks: on 2 cores and 10M prompts, about a second saved."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskdiv-ids") as helper:
        ranking = None
        ids = raw[fields.id_field] if fields.id_field in raw.columns else None
        if ids is not None and not ids.isna().any() \
                and pd.api.types.infer_dtype(ids, skipna=True) in ("string", "empty", *_NUMBER_KINDS):
            ranking = helper.submit(id_ranks, ids.astype(str))  # other values are refused by _normalise_rows
        return _normalise_rows(raw, fields, source, where, require_tasks, ranking)


def _normalise_rows(raw, fields, source, where, require_tasks, ranking):
    """The pool columns of `raw`, checked in this order: prompt, task, the fields named on the
    command line, response, ids. Returns (frame, ranks of the ids or None, task codes or None)."""
    cols = set(raw.columns)
    err, loc, lines = _row_errors(raw, source, where)
    out = pd.DataFrame(index=raw.index)
    out["prompt"], response = _prompt_and_response(raw, fields, cols, err, source)

    codes = None
    if fields.task_field in cols:
        # Stripped: " t " and "t" are one task (a label's blanks are an export accident).
        out["task"], codes = _task_labels(raw[fields.task_field], fields.task_field, err, required=require_tasks)
    elif require_tasks:
        raise DataError(f"no task field {fields.task_field!r}; map it with --task-field, "
                        f"or use --tasks auto to cluster prompts into tasks", file=source)

    _check_named_fields(fields, cols, source)
    if response is None and fields.response_field in cols:
        response = raw[fields.response_field]
        # A list (several references) or a bool would become text by accident.
        _check_types(response, fields.response_field, err, what="response", numbers=True)
    if response is not None:
        out["response"] = _response_text(response, out.index)
    for extra in ("choices", "targets"):
        if extra in cols:
            out[extra] = raw[extra]

    if fields.id_field in cols:
        out["id"] = _given_ids(raw[fields.id_field], fields.id_field, err)
        if codes is None and "task" in out.columns:
            codes = task_codes(out["task"])  # while the ids are ranked
        # Started by _normalise for every column of text or numbers without a missing id.
        ranks = ranking.result() if ranking is not None else id_ranks(out["id"])
        _check_unique(out["id"], ranks, lambda message, i: err(message, i, fields.id_field), loc, lines)
    else:
        out["id"], ranks = _generate_ids(out.get("task"), out["prompt"], source), None
    order = ["id", "prompt"] + [c for c in ("task",) + OPTIONAL_COLUMNS if c in out.columns]
    return out[order].reset_index(drop=True), ranks, codes


def _row_errors(raw: pd.DataFrame, source: str, where: str):
    """(err, loc, lines): err(message, i, field) is the DataError for the i-th row, naming
    its line (JSONL) or row; loc is "line" or "row"; lines(i) is the i-th row's number."""
    numbers = raw["__line__"].to_numpy() if "__line__" in raw.columns else None

    def lines(i):
        return int(numbers[i]) if numbers is not None else int(i) + 1

    loc = "line" if where == "line" else "row"

    def err(message, i, fld):
        return DataError(message, file=source, field=fld, **{loc: lines(i)})

    return err, loc, lines


def _prompt_and_response(raw: pd.DataFrame, fields: FieldMap, cols: set, err,
                         source: str) -> tuple[pd.Series, pd.Series | None]:
    """The checked prompts, by the source's shape (Alpaca, chat, a template or the prompt
    field), and the responses the shape itself carries (None for the mapped shape)."""
    shape = _detect_shape(cols, fields)
    response = None
    prompt_name = "prompt"
    if shape == "alpaca":
        prompt = _render_template(raw, "{instruction}\n\n{input}" if "input" in cols else "{instruction}", err,
                                  source)
        response = raw["output"]
        _check_types(response, "output", err, what="response", numbers=True)
        log.info("%s: recognised the Alpaca shape (instruction/input/output)", source)
    elif shape == "chat":
        key = "messages" if "messages" in cols else "conversations"
        prompt, response = _first_turns(raw[key], key, err)
        prompt_name = key  # the first user turn's content
        log.info("%s: recognised the chat shape (%s)", source, key)
    elif fields.prompt_template:
        prompt = _render_template(raw, fields.prompt_template, err, source)
    else:
        if fields.prompt_field not in cols:
            raise DataError(f"no prompt field {fields.prompt_field!r}; the source has "
                            f"{_source_fields(cols)} "
                            f"(map it with --prompt-field or --prompt-template)", file=source)
        prompt = raw[fields.prompt_field]
        prompt_name = fields.prompt_field
    return _check_text(prompt, prompt_name, err, what="prompt", numbers=False), response


def _check_named_fields(fields: FieldMap, cols: set, source: str) -> None:
    """An --id-field or --response-field asked for by name must exist: not silently generated or dropped."""
    defaults = FieldMap()
    for name, given, default in (("--id-field", fields.id_field, defaults.id_field),
                                 ("--response-field", fields.response_field, defaults.response_field)):
        if given != default and given not in cols:
            raise DataError(f"no field {given!r} ({name}); the source has "
                            f"{_source_fields(cols)}", file=source)


def _response_text(response: pd.Series, index: pd.Index) -> pd.Series:
    """The reference responses as text; missing and blank ones (an empty CSV cell, "") become None."""
    if response.dtype != object and pd.api.types.is_string_dtype(response.dtype) and not response.isna().any():
        text = response  # already text, none missing: no per-row copy of millions of strings
    else:
        values = response.to_numpy(dtype=object).copy()
        missing = pd.isna(values)
        values[missing] = None
        values[~missing] = [str(v) for v in values[~missing]]
        text = pd.Series(values, index=index, dtype=object)
    blank = _blank(text.fillna("")) & text.notna().to_numpy()
    if blank.any():  # an empty cell (CSV) or "" is no reference response
        text = text.astype(object).where(~blank, None)
    return text


def _given_ids(ids: pd.Series, name: str, err) -> pd.Series:
    """The source's ids as text; a list or bytes, a missing id or a blank one is refused."""
    _check_types(ids, name, err, what="id", numbers=True)
    missing = ids.isna().to_numpy()
    if not missing.any():  # an empty CSV cell, or "", is no id either
        missing = _blank(ids.astype(str))
    if missing.any():
        raise err("missing id", int(np.argmax(missing)), name)
    return ids.astype(str)


def _check_unique(ids: pd.Series, ranks: np.ndarray, err, loc: str, lines) -> None:
    """Refuse repeated ids: repeats share their rank (id_ranks)."""
    if len(ranks) < 2 or ranks.max() == len(ranks) - 1:
        return
    dup = ids.duplicated(keep=False).to_numpy()  # the error path: name the first repeat in row order
    first = ids.iloc[int(np.argmax(dup))]
    rows = np.flatnonzero((ids == first).to_numpy())
    raise err(f"duplicate id {first!r} (also at {loc} {lines(rows[1])}; "
              f"{int(ids.duplicated().sum())} duplicate id(s) in all)", int(rows[0]))


def _task_labels(values: pd.Series, name: str, err, *, required: bool) -> tuple[pd.Series, tuple | None]:
    """The task labels as _check_text(strip=True) makes them, and their task_codes().

    The usual column (Arrow text, none missing) is hash-encoded first, and the strip and
    blank checks then look at each distinct label once instead of every row: 100K labels
    instead of 10M rows. A label that is blank or that the strip would change sends the
    column the way of every other (codes None: computed later from the stripped labels)."""
    if isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow" and not values.isna().any():
        names, indices = _dictionary(arrow_text(values))
        labels = pd.Series(names.to_pylist(), dtype=values.dtype)
        if not _blank(labels).any() and (labels.str.strip().str.len() == labels.str.len()).all():
            return values, _sorted_codes(names, indices)
    return _check_text(values, name, err, what="task label", required=required, numbers=True, strip=True), None


_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\\\": "\\"}


def template_escapes(template: str) -> str:
    """A template's \\n, \\t and \\\\ as newline, tab and backslash; other backslashes stay.

    A shell passes '{a}\\n\\n{b}' with a literal backslash-n: read like this, the
    command line gives what the README shows, and a YAML template (whose double-quoted
    strings have already turned \\n into a newline) reads the same."""
    return re.sub(r"\\[nt\\]", lambda m: _ESCAPES[m.group()], template)


def _render_template(raw: pd.DataFrame, template: str, err, source: str | None = None) -> pd.Series:
    # Split the template into literal separators and fields, and drop a field together
    # with the separator before it when the field is empty (Dolly's empty context).
    template = template_escapes(template)
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise DataError(f"--prompt-template {template!r} is not a valid template ({e})") from None
    names = [f for _, f, _, _ in parts if f is not None]
    if "" in names:
        raise DataError(f"--prompt-template {template!r}: every {{}} must name a field, e.g. {{instruction}}")
    missing = [n for n in names if n not in raw.columns]
    if missing:
        raise DataError(f"prompt template uses field(s) {missing} that the source lacks "
                        f"(it has {_source_fields(raw.columns)})", file=source)
    for n in names:
        _check_types(raw[n], n, err, what=f"template field {n!r}", numbers=True)
    columns = {n: raw[n].where(raw[n].notna(), "").astype(str) for n in names}
    result = []
    for i in range(len(raw)):
        pieces = []
        for literal, fname, spec, conv in parts:
            if fname is None:
                pieces.append(literal)
                continue
            value = columns[fname].iat[i]
            if value.strip():
                try:
                    pieces.append(literal + format(value, spec or ""))
                except (ValueError, TypeError) as e:
                    raise err(f"--prompt-template cannot format this field with {{{fname}:{spec}}} ({e})",
                              i, fname) from None
        result.append("".join(pieces).strip())
    return pd.Series(result, index=raw.index, dtype=object)


def _first_turns(conversations: pd.Series, key: str, err) -> tuple[pd.Series, pd.Series]:
    user_roles, assistant_roles = {"user", "human"}, {"assistant", "gpt", "bot", "model"}
    prompts, responses = [], []
    for i, conv in enumerate(conversations):
        prompt = response = None
        if not isinstance(conv, (list, tuple, np.ndarray)):  # missing (NaN/None), text, number, object
            raise err(f"expected a list of turns, got {_describe(conv)}", i, key)
        for turn in conv:
            if not isinstance(turn, dict):
                raise err("a turn is not an object", i, key)
            # Not .get(a, .get(b)): in a file mixing the OpenAI and ShareGPT shapes, Arrow gives
            # every turn both keys, the absent one as null.
            role = turn.get("role") if turn.get("role") is not None else turn.get("from")
            content = turn.get("content") if turn.get("content") is not None else turn.get("value")
            content = _turn_text(content, i, key, err)
            if prompt is None and role in user_roles:
                prompt = content
            elif prompt is not None and role in assistant_roles:
                response = content
                break
        prompts.append(prompt)
        responses.append(response)
    return (pd.Series(prompts, index=conversations.index, dtype=object),
            pd.Series(responses, index=conversations.index, dtype=object))


def _turn_text(content, i: int, key: str, err):
    """A turn's text: a string, or the text parts of OpenAI's list of content parts
    ([{"type": "text", "text": ...}]); anything else is an error naming the row."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, (list, tuple, np.ndarray)) and all(isinstance(p, dict) for p in content):
        texts = [p.get("text") for p in content if p.get("type") == "text"]
        if texts and all(isinstance(t, str) for t in texts):
            return "\n".join(texts)
    raise err(f"a turn's content is {_kind(content)}; accepted: text, or a list of text parts", i, key)


def _describe(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "nothing (the field is missing or null)"
    return type(value).__name__


def _generate_ids(tasks: pd.Series | None, prompts: pd.Series, source: str) -> list[str]:
    task_values = tasks.fillna("").tolist() if tasks is not None else [""] * len(prompts)
    ids, seen = [], {}
    for t, p in zip(task_values, prompts.tolist()):
        base = stable_id(t, p)
        n = seen.get(base, 0)
        seen[base] = n + 1
        # A repeated (task, prompt) pair keeps a stable, unique id: its occurrence number.
        ids.append(base if n == 0 else f"{base}-{n}")
    repeats = sum(n - 1 for n in seen.values())
    if repeats:
        log.warning("%s: %d prompt(s) repeat an earlier prompt of the same task; "
                    "they get ids with an occurrence suffix", source, repeats)
    return ids
