"""The local engine of `taskdiv score`: greedy generation with per-step statistics, and
the scorer that formats, batches and generates the prompts a score cache lacks.

`scoring` (the stage: sampling, rounds, outputs) runs `Scorer` in this process, and
`distributed` runs the same `Scorer.generate` on Ray actors, so both engines compute the
same batches the same way. The model lives as long as its holder keeps it: `Scorer` loads
it on first need (`load_model`) unless given one.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Generation:
    """One greedy response: its tokens and per-step statistics from the raw logits."""

    token_ids: list[int]
    logprobs: np.ndarray    # log p of each chosen token
    entropies: np.ndarray   # entropy (nats) of each step's full distribution


def generate_greedy(model, batch: list[list[int]], *, max_new_tokens: int, eos_ids, pad_id: int) -> list[Generation]:
    """Greedy generation for a batch of token-id lists (left padded, KV cache).

    The probabilities come from the raw logits (float32 log-softmax), with no logits
    processor. A row stops at its first EOS (counted as generated) and leaves the
    batch, so finished rows cost nothing.
    """
    import torch
    from transformers import DynamicCache

    from .models import cache_kwargs, left_pad, padded_positions

    dev = model.device
    n = len(batch)
    assert n > 0 and min(len(ids) for ids in batch) > 0, "every prompt needs at least one token"
    input_ids, mask = left_pad(batch, pad_id)
    input_ids, mask = input_ids.to(dev), mask.to(dev)
    positions = padded_positions(mask)
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=dev)
    rows = torch.arange(n, device=dev)  # original row of each row still in the batch
    steps: list[list[tuple[int, float, float]]] = [[] for _ in range(n)]
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                    **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
        last = positions[:, -1]
        for step in range(max_new_tokens):
            logits = out.logits[:, -1, :].float()
            logp = torch.log_softmax(logits, dim=-1)
            chosen = logits.argmax(dim=-1)
            chosen_lp = logp.gather(1, chosen[:, None])[:, 0]
            entropy = torch.special.entr(logp.exp()).sum(dim=-1)
            for r, t, lp, h in zip(rows.tolist(), chosen.tolist(), chosen_lp.tolist(), entropy.tolist()):
                steps[r].append((t, lp, h))
            if step == max_new_tokens - 1:
                break
            live = ~torch.isin(chosen, eos)
            if not live.any():
                break
            if not live.all():
                keep = live.nonzero()[:, 0]
                cache.batch_select_indices(keep)
                rows, mask, last, chosen = rows[keep], mask[keep], last[keep], chosen[keep]
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            last = last + 1
            out = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=last[:, None],
                        **cache_kwargs(model, cache), use_cache=True)
    return [Generation([t for t, _, _ in s], np.array([lp for _, lp, _ in s], dtype=np.float32),
                       np.array([h for _, _, h in s], dtype=np.float32)) for s in steps]


def load_model(ref, dtype: str, tokenizer=None):
    """(model, tokenizer) for scoring. Nothing keeps it loaded but the caller: `score` loads
    it once per call and drops it at the end, unless the caller passes one it keeps (`loaded=`)."""
    from transformers.utils import logging as hf_logging

    from ..common import progress
    from . import models

    log.info("loading %s (%s)", ref.name, dtype)
    if progress.enabled() or not hf_logging.is_progress_bar_enabled():
        return models.load(ref, dtype, tokenizer)
    hf_logging.disable_progress_bar()  # its "Loading weights" bar, for this load only
    try:
        return models.load(ref, dtype, tokenizer)
    finally:
        hf_logging.enable_progress_bar()


class Scorer:
    """Formats, tokenizes, batches and generates the prompts the cache lacks."""

    def __init__(self, cfg: ScoreConfig, ref, tokenizer, chat: bool, max_prompt: int, cache: ScoreCache,
                 model=None):
        self.cfg, self.ref, self.tok, self.chat = cfg, ref, tokenizer, chat
        self.max_prompt, self.cache = max_prompt, cache
        self.model = model  # loaded on first need, then kept for the later rounds of this run
        self.computed = 0
        self.seconds = 0.0

    def encode(self, prompt: str) -> tuple[list[int], bool]:
        from . import models

        return models.truncate_left(models.encode_prompt(self.tok, prompt, self.chat), self.max_prompt,
                                    self.tok.bos_token_id)

    def plan(self, prompts: dict[str, str]) -> tuple[list[str], dict[str, tuple[list[int], bool]]]:
        """(shas in batch order, {sha: (token ids, truncated)}): longest first, so that similar
        lengths share a batch (little padding) and memory peaks early. The Ray engine cuts
        this same order into shards of whole batches, so both engines run the same batches."""
        encoded = {sha: self.encode(p) for sha, p in prompts.items()}
        truncated = sum(t for _, t in encoded.values())
        if truncated:
            log.warning("%d prompt(s) are longer than %d tokens: truncated from the left", truncated, self.max_prompt)
        return sorted(encoded, key=lambda s: (-len(encoded[s][0]), s)), encoded

    def eos_ids(self, model) -> set:
        eos = {self.tok.eos_token_id} | set(_as_list(model.generation_config.eos_token_id))
        eos.discard(None)
        return eos

    def load(self):
        """The runner's model (here a transformers model; the vLLM runner's is a server connection)."""
        return load_model(self.ref, self.cfg.dtype, self.tok)[0]

    def generate_batches(self, model, eos, batches: list[list[str]], encoded) -> list:
        """The rows of several batches, in order (the vLLM runner sends them at once)."""
        return [row for shas in batches for row in self.generate(model, eos, shas, encoded)]

    def generate(self, model, eos, shas: list[str], encoded) -> list[tuple[str, Generation, str, int, bool]]:
        """One batch: the rows `ScoreCache.add` stores (sha, generation, text, prompt tokens, truncated)."""
        gens = generate_greedy(model, [encoded[s][0] for s in shas], max_new_tokens=self.cfg.max_new_tokens,
                               eos_ids=eos, pad_id=self.tok.pad_token_id)
        return [(s, g, self.tok.decode(g.token_ids, skip_special_tokens=True), len(encoded[s][0]), encoded[s][1])
                for s, g in zip(shas, gens)]

    def prepare(self, prompts: dict[str, str]):
        """What a run needs before its first batch: (model, EOS ids, order, encoded prompts);
        the model is loaded on first use and kept. Every runner starts here."""
        if self.model is None:
            self.model = self.load()
        order, encoded = self.plan(prompts)
        return self.model, self.eos_ids(self.model), order, encoded

    def run(self, prompts: dict[str, str], desc: str) -> None:
        """Generate for {sha: prompt} (all missing from the cache), storing batch by batch."""
        if not prompts:
            return
        from ..common import progress

        model, eos, order, encoded = self.prepare(prompts)
        start = time.perf_counter()
        with progress.bar(total=len(order), desc=desc, unit="prompt") as pbar:
            for i in range(0, len(order), self.cfg.batch_size):
                shas = order[i:i + self.cfg.batch_size]
                self.cache.add(self.generate(model, eos, shas, encoded))
                self.computed += len(shas)
                pbar.update(len(shas))
        self.seconds += time.perf_counter() - start


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]
