"""The held-out suite: accuracy on the held-out prompts of the pool's tasks, multiple choice by
the likeliest choice and generative by greedy answers, with per-task bootstrap intervals.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.errors import DataError, TaskdivError
from ..common.partial import append_partial, read_partial
from ..common.writers import write_jsonl

log = logging.getLogger(__name__)


def load_model(ref, dtype: str, tokenizer=None):
    """(model, tokenizer) ready for inference; a LoRA adapter is merged for speed. A
    tokenizer already loaded is reused."""
    from ..engines import models

    try:
        model, tok = models.load(ref, dtype, tokenizer)
    except RuntimeError as e:  # e.g. an adapter of another base model: size mismatch
        raise TaskdivError(f"{ref.name}: cannot load the model{' with its adapter' if ref.adapter else ''} "
                           f"({str(e).splitlines()[0][:300]})") from None
    if ref.adapter:
        model = model.merge_and_unload()
    model.eval()
    return model, tok


def choice_scores(model, prompt_ids: list[list[int]], choice_ids: list[list[list[int]]], pad_id: int,
                  max_rows: int = 64) -> list[np.ndarray]:
    """Mean log-probability per token of each choice continuation, one array per prompt.

    The prompts run once (left-padded, KV cache kept); the cache rows are then repeated
    for each choice and the choices run on top of it, so a prompt's tokens are computed
    once however many choices it has.
    """
    import torch

    from ..engines.models import cache_kwargs, left_pad, output_cache, padded_positions

    device = next(model.parameters()).device
    ids, mask = left_pad(prompt_ids, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    pos = padded_positions(mask)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        cache = output_cache(out)
        owner = [i for i, cs in enumerate(choice_ids) for _ in cs]
        flat = [c for cs in choice_ids for c in cs]
        scores = np.zeros(len(flat))
        lengths = mask.sum(-1)
        for start in range(0, len(flat), max_rows):  # bounded memory: cache copies per choice
            rows = torch.tensor(owner[start:start + max_rows], device=device)
            conts = flat[start:start + max_rows]
            width = max(len(c) for c in conts)
            cids = torch.full((len(conts), width), pad_id, dtype=torch.long, device=device)
            cmask = torch.zeros_like(cids)
            for j, c in enumerate(conts):
                cids[j, :len(c)] = torch.tensor(c, device=device)
                cmask[j, :len(c)] = 1
            sub = _select_cache(cache, rows)
            attn = torch.cat([mask[rows], cmask], dim=1)
            cpos = lengths[rows, None] + torch.arange(width, device=device)[None, :]
            logits = model(input_ids=cids, attention_mask=attn, position_ids=cpos, **cache_kwargs(model, sub),
                           use_cache=True).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1) if width > 1 else None
            tok_lp = torch.zeros(cids.shape, device=device)
            tok_lp[:, 0] = first[rows].gather(1, cids[:, :1]).squeeze(1)
            if logp is not None:
                tok_lp[:, 1:] = logp.gather(2, cids[:, 1:, None]).squeeze(2)
            tok_lp = tok_lp * cmask
            scores[start:start + len(conts)] = (tok_lp.sum(1) / cmask.sum(1)).cpu().numpy()
            del sub, logits, logp
    out_scores, k = [], 0
    for cs in choice_ids:
        out_scores.append(scores[k:k + len(cs)])
        k += len(cs)
    return out_scores


def _select_cache(cache, rows):
    """A copy of the KV cache with batch rows `rows` (repeats allowed)."""
    import copy

    sub = copy.copy(cache)
    sub.layers = [copy.copy(layer) for layer in cache.layers]
    sub.batch_select_indices(rows)  # indexing makes new tensors: `cache` itself is untouched
    return sub


def generate(model, tok, prompt_ids: list[list[int]], caps: list[int]) -> list[str]:
    """Greedy continuations, cut at the first newline. `caps`: each prompt's cap on new tokens;
    the batch runs to the largest and each continuation is cut to its own, so that a
    prompt's answer does not depend on the prompts batched with it."""
    import torch

    from ..engines.models import left_pad

    device = next(model.parameters()).device
    ids, mask = left_pad(prompt_ids, tok.pad_token_id)
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max(caps), stop_strings=["\n"], tokenizer=tok,
                             pad_token_id=tok.pad_token_id, top_p=None, top_k=None, temperature=None)
    new = out[:, ids.shape[1]:]
    texts = tok.batch_decode([row[:cap] for row, cap in zip(new, caps)], skip_special_tokens=True)
    return [t.split("\n", 1)[0] for t in texts]


def normalise_answer(text: str) -> str:
    return " ".join(str(text).lower().split())


def _answers(value, *, spec: str, row: int, rid: str, field: str) -> list[str] | None:
    """A `targets` or `choices` cell as a list of strings.

    targets: a string (one accepted answer) or a non-empty list. choices: missing (a
    generative row) or a non-empty list; a bare string is refused, since reading it as
    a list would make each character a choice.
    """
    if field == "choices" and (value is None or (isinstance(value, float) and value != value)):
        return None
    if field == "targets" and isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) > 0:
        return [str(x) for x in value]
    want = "a string or a non-empty list" if field == "targets" else "a non-empty list (or no value)"
    raise DataError(f"id {rid!r}: expected {want}, got {type(value).__name__} {str(value)[:60]!r}",
                    file=spec, row=row, field=field)


def load_heldout(spec: str, limit: int | None) -> pd.DataFrame:
    from ..pool.load import load_pool

    return check_heldout(load_pool(spec, require_tasks=True).frame, spec, limit)


def check_heldout(frame: pd.DataFrame, spec: str, limit: int | None = None) -> pd.DataFrame:
    """A pool's rows as held-out items: targets on every row (among the choices, where there are
    choices), as lists of strings; at most `limit` per task. Errors name `spec`, row and field."""
    if "targets" not in frame.columns:
        raise DataError("no 'targets' field: held-out evaluation needs the accepted answers of each row "
                        "(and 'choices' for multiple choice)", file=spec)
    bad = frame["targets"].map(lambda t: t is None or (isinstance(t, float) and t != t)
                               or (isinstance(t, (list, tuple, np.ndarray)) and len(t) == 0))
    if bad.any():
        raise DataError(f"{int(bad.sum())} row(s) without targets: ids {', '.join(frame['id'][bad][:10])}",
                        file=spec, field="targets")
    frame = frame.copy()
    if "choices" not in frame.columns:
        frame["choices"] = None
    for col in ("targets", "choices"):
        frame[col] = pd.Series([_answers(v, spec=spec, row=n + 1, rid=i, field=col)
                                for n, (i, v) in enumerate(zip(frame["id"], frame[col]))],
                               index=frame.index, dtype=object)
    mc = frame["choices"].notna()
    stray = mc & ~frame.apply(lambda r: r["choices"] is not None and set(r["targets"]) <= set(r["choices"]), axis=1)
    if stray.any():
        raise DataError(f"targets that are not among the choices: ids {', '.join(frame['id'][stray][:10])}",
                        file=spec, field="targets")
    if limit is not None:
        frame = frame.groupby("task", sort=False, group_keys=False).head(limit)
    return frame.reset_index(drop=True)


def run_heldout(model, tok, frame: pd.DataFrame, chat: bool, cfg, partial: Path, key: str):
    """Per-item results (id, task, kind, prediction, correct), resuming from `partial`. `cfg`: the
    evaluate command's `EvalConfig` (its batch_size and max_new_tokens)."""
    from ..common.progress import bar
    from ..engines import models

    done = read_partial(partial, key)
    if done:
        log.info("resuming: %d of %d item(s) already evaluated", len(done), len(frame))
    # Rewritten (atomically) before appending: a line cut off by the interruption would
    # otherwise run into the first new record, and the next resume would stop there.
    write_jsonl(partial, [{"key": key}, *done.values()])

    todo = frame[~frame["id"].isin(list(done))]
    prompts = {i: models.encode_prompt(tok, p, chat) for i, p in zip(todo["id"], todo["prompt"])}
    # Each item's cap on generated tokens: its longest target and 4 more (within --max-new-tokens).
    is_mc = todo["choices"].notna()
    caps = {i: min(cfg.max_new_tokens, 4 + max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in ts))
            for i, ts in zip(todo["id"][~is_mc], todo["targets"][~is_mc])}
    conts = {i: [models.encode_response(tok, p, c, chat) for c in cs]
             for i, p, cs in zip(todo["id"][is_mc], todo["prompt"][is_mc], todo["choices"][is_mc])}
    # A prompt longer than the model's context, with room for its answer, is cut from the left
    # (as `taskdiv score` does): the end of a prompt holds the question.
    context, cut = models.context_length(model), 0  # a model, or a VLLMEvaluator: both carry .config
    for i in prompts:
        room = context - (max(len(c) for c in conts[i]) if i in conts else caps[i])
        prompts[i], was_cut = models.truncate_left(prompts[i], max(1, room), tok.bos_token_id)
        cut += was_cut
    if cut:
        log.warning("%d held-out prompt(s) are longer than the model's context of %d tokens leaves room for: "
                    "truncated from the left", cut, context)
    # Similar lengths in a batch: less padding.
    todo = todo.assign(_len=todo["id"].map(lambda i: len(prompts[i]))).sort_values("_len", kind="stable")
    mc, gen = todo[todo["choices"].notna()], todo[todo["choices"].isna()]
    progress = bar(total=len(frame), initial=len(done), desc="evaluate", unit="item")
    with open(partial, "a", encoding="utf-8") as sink:
        for start in range(0, len(mc), cfg.batch_size):
            batch = mc.iloc[start:start + cfg.batch_size]
            if hasattr(model, "conn"):  # --engine vllm
                scores = model.choice_scores([prompts[i] for i in batch["id"]], [conts[i] for i in batch["id"]])
            else:
                scores = choice_scores(model, [prompts[i] for i in batch["id"]], [conts[i] for i in batch["id"]],
                                       tok.pad_token_id)
            recs = []
            for (_, row), s in zip(batch.iterrows(), scores):
                pred = row["choices"][int(np.argmax(s))]
                recs.append({"id": row["id"], "task": row["task"], "kind": "mc", "prediction": pred,
                             "correct": pred in row["targets"], "scores": [round(float(x), 5) for x in s]})
            append_partial(sink, recs, done, progress)
        for start in range(0, len(gen), cfg.batch_size):
            batch = gen.iloc[start:start + cfg.batch_size]
            run = model.generate if hasattr(model, "conn") else lambda p, c: generate(model, tok, p, c)
            texts = run([prompts[i] for i in batch["id"]], [caps[i] for i in batch["id"]])
            recs = [{"id": i, "task": t, "kind": "generative", "prediction": text,
                     "correct": normalise_answer(text) in {normalise_answer(x) for x in ts}}
                    for i, t, ts, text in zip(batch["id"], batch["task"], batch["targets"], texts)]
            append_partial(sink, recs, done, progress)
    progress.close()
    return pd.DataFrame([done[i] for i in frame["id"]])


def summarise(items: pd.DataFrame, *, n_boot: int, seed: int) -> tuple[pd.DataFrame, dict]:
    """Per-task accuracy with 95% bootstrap intervals, and the macro average with its interval.

    Resampling the items of a task with replacement and counting the correct ones is a
    binomial draw with the task's accuracy, so the bootstrap is drawn that way directly;
    the macro resample averages independent resamples of every task.
    """
    rng = np.random.default_rng(seed)
    rows, boots = [], []
    for task, grp in items.groupby("task", sort=True):
        n, acc = len(grp), float(grp["correct"].mean())
        boot = rng.binomial(n, acc, size=n_boot) / n
        boots.append(boot)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        rows.append({"task": task, "n": n, "accuracy": acc, "ci_low": float(lo), "ci_high": float(hi)})
    table = pd.DataFrame(rows, columns=["task", "n", "accuracy", "ci_low", "ci_high"])
    macro_boot = np.mean(boots, axis=0) if boots else np.array([np.nan])
    lo, hi = np.percentile(macro_boot, [2.5, 97.5])
    macro = {"n_tasks": len(table), "n": int(table["n"].sum()), "accuracy": float(table["accuracy"].mean()),
             "ci_low": float(lo), "ci_high": float(hi),
             "micro_accuracy": float(items["correct"].mean()) if len(items) else float("nan")}
    return table, macro


def format_table(table: pd.DataFrame, macro: dict, max_rows: int = 80) -> str:
    shown = table.head(max_rows).copy()
    for col in ("accuracy", "ci_low", "ci_high"):
        shown[col] = shown[col].map(lambda v: f"{v:.3f}")
    text = shown.to_string(index=False)
    if len(table) > max_rows:
        text += f"\n... {len(table) - max_rows} more task(s) in per_task.csv"
    return text + (f"\nmacro accuracy {macro['accuracy']:.3f} [{macro['ci_low']:.3f}, {macro['ci_high']:.3f}] "
                   f"over {macro['n_tasks']} task(s), {macro['n']} item(s); micro {macro['micro_accuracy']:.3f}")
