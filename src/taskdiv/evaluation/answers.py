"""Long-form answers of a model to open instructions, for the judge suite.

    answers = generate(cfg, ref, tok, chat, frame, partial=out / ".answers.partial.jsonl", key=...)

Greedy decoding, stopped at EOS or after --max-answer-tokens, with the prompt formatted as
in training and scoring (`models.encode_prompt`: the chat template for chat models). A
prompt longer than the model's context leaves room for the answer by being cut from the
left (as the heldout suite does). --engine local runs transformers in this process
(batches of --batch-size, similar lengths together); --engine vllm sends token ids to a
vLLM server (`vllm_engine.VLLMEvaluator`: its own, or --vllm-url). Each batch is appended
to `partial` as it finishes, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import logging
import time

import pandas as pd

log = logging.getLogger(__name__)


def generate(cfg, ref, tok, chat: bool, frame: pd.DataFrame, partial, key: str) -> tuple[dict[str, str], dict]:
    """({id: answer}, timings) for the rows of `frame` (id, instruction), resuming from `partial`."""
    from ..common.partial import append_partial, read_partial
    from ..common.progress import bar
    from ..common.writers import write_jsonl
    from ..engines import models
    from ..engines.local import load_model

    done = read_partial(partial, key)
    if done:
        log.info("resuming: %d of %d answer(s) already generated", len(done), len(frame))
    write_jsonl(partial, [{"key": key}, *done.values()])
    todo = frame[~frame["id"].isin(list(done))]
    info = {"generated": len(todo), "reused": len(frame) - len(todo), "load_seconds": 0.0, "seconds": 0.0}
    if len(todo):
        start = time.perf_counter()
        if cfg.engine == "vllm":
            from ..engines.vllm import VLLMEvaluator

            model = VLLMEvaluator(cfg, ref, tok, log_path=partial.parent / "vllm-server.log")
            context = models.context_length(model.config)
        else:
            model, tok = load_model(ref, models.dtype_name(cfg.dtype), tok)
            if ref.adapter:
                model = model.merge_and_unload()  # a run's LoRA adapter, merged for speed
            context = models.context_length(model)
        info["load_seconds"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        prompts = {i: models.truncate_left(models.encode_prompt(tok, p, chat),
                                           max(1, context - cfg.max_answer_tokens), tok.bos_token_id)[0]
                   for i, p in zip(todo["id"], todo["instruction"])}
        order = sorted(prompts, key=lambda i: len(prompts[i]))
        progress = bar(total=len(frame), initial=len(done), desc="answers", unit="answer")
        try:
            with open(partial, "a", encoding="utf-8") as sink:
                for b in range(0, len(order), cfg.batch_size):
                    ids = order[b:b + cfg.batch_size]
                    batch = [prompts[i] for i in ids]
                    texts = model.answers(batch, cfg.max_answer_tokens) if cfg.engine == "vllm" \
                        else _local(model, tok, batch, cfg.max_answer_tokens)
                    append_partial(sink, [{"id": i, "output": t} for i, t in zip(ids, texts)], done, progress)
        finally:
            progress.close()
            if cfg.engine == "vllm":
                model.close()
            del model
            models.free_memory()
        info["seconds"] = round(time.perf_counter() - start, 2)
        info["seconds_per_answer"] = round(info["seconds"] / len(todo), 3)
    return {i: done[i]["output"] for i in frame["id"]}, info


def _local(model, tok, prompt_ids: list[list[int]], max_new: int) -> list[str]:
    """Greedy answers with transformers, stopped at the model's EOS (its generation config)."""
    import torch

    from ..engines.models import left_pad

    device = next(model.parameters()).device
    ids, mask = left_pad(prompt_ids, tok.pad_token_id)
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new, pad_token_id=tok.pad_token_id, top_p=None, top_k=None,
                             temperature=None)
    return [t.strip() for t in tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)]
