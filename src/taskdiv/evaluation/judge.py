"""The judge suite: an LLM judge's win rate against reference answers (AlpacaEval), through
any OpenAI-compatible server.

    taskdiv evaluate runs/ft --suite judge --judge-url http://127.0.0.1:8000 --judge-model M --out runs/ft/judge
    taskdiv evaluate model_outputs.json --suite judge --judge-url https://api.openai.com --judge-model gpt-4o-mini ...

What comes from the `alpaca-eval` package, unchanged: the annotator config (default
`weighted_alpaca_eval_gpt4_turbo`, the AlpacaEval 2.0 judge) with its prompt template,
the formatting of prompts (`SinglePairwiseAnnotator`: the template, the seeded random
order of the two outputs), the parsing of the judge's completion (the config's parser,
e.g. `logprob_parser`), the win rate (`metrics.get_winrate`) and the length-controlled
win rate (`metrics.get_length_controlled_winrate`, or its helpers, see `length_controlled`).
What taskdiv adds is the transport: `fn_completions`, handed to the annotator in place of
alpaca_eval's own OpenAI decoder, sends each prompt to --judge-url's chat completions
endpoint (the `openai` client: retries with exponential backoff on 408/409/429/5xx,
connection errors and timeouts), --judge-concurrency at once, and stores each verdict in
a SQLite cache as it returns (so a killed run loses only the requests in flight). The
cache key is the judge (its model name and owner), the annotator config (its name, the
prompt template's hash and the decoding settings) and the formatted prompt, which holds
the instruction and both outputs in the order shown: a rerun asks nothing twice.

Order of the outputs (--judge-order): `random` is alpaca_eval's own (one verdict per
instruction, the reference first or second by a seeded draw on the instruction); `both`
asks for both orders and averages them (twice the cost; a judge's preference for a
position cancels). Either way the position bias is reported: the mean probability that
the output shown first wins, minus 0.5 (zero for an unbiased judge, whatever the quality
of the two outputs, because the order is balanced).

A verdict the parser cannot read (NaN or None) is counted and reported and left out of
the win rate; an instruction without any readable verdict is left out, never scored as a
loss. The key comes from $TASKDIV_JUDGE_API_KEY, else $OPENAI_API_KEY (a local server
needs none); it is never a flag and never written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import sys
import time
import types
import warnings
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.errors import DataError, TaskdivError

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "weighted_alpaca_eval_gpt4_turbo"
ORDERS = ("random", "both")
KEY_ENV = ("TASKDIV_JUDGE_API_KEY", "OPENAI_API_KEY")
INSTALL_HINT = "pip install 'taskdiv[judge]' (alpaca-eval, openai)"
REACH_TIMEOUT_S = 10.0
# completions_kwargs of alpaca_eval's configs that its OpenAI decoder consumes itself
# (not sent to the server).
_DECODER_ONLY = ("model_name", "requires_chatml", "num_procs", "batch_size", "price_per_token", "is_strip",
                 "is_skip_multi_tokens_to_avoid", "client_config_path", "n_retries", "sleep_time")
LC_FILES = ("df_gamed.csv", "instruction_difficulty.csv")


def alpaca_eval():
    """The alpaca_eval package, or a TaskdivError with the install hint.

    alpaca-eval 0.6.6 imports `pkg_resources` for two version helpers; setuptools 81 removed
    it. Where it is missing, a stand-in module with those two functions (from `packaging`
    and `importlib.metadata`) is registered first, rather than pinning an old setuptools."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        from importlib import metadata

        from packaging.version import parse

        shim = types.ModuleType("pkg_resources")
        shim.parse_version = parse
        shim.get_distribution = lambda name: types.SimpleNamespace(version=metadata.version(name))
        sys.modules["pkg_resources"] = shim
    try:
        import alpaca_eval as ae
        from alpaca_eval import completion_parsers, metrics, utils  # noqa: F401
        from alpaca_eval.annotators import pairwise_evaluator  # noqa: F401
    except ImportError as e:
        raise TaskdivError(f"--suite judge needs alpaca-eval ({e}); {INSTALL_HINT}") from None
    return ae


def api_key() -> str | None:
    for name in KEY_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


# ----------------------------------------------------------------------------- data


def load_reference(spec: str | None, limit: int | None) -> tuple[pd.DataFrame, bool]:
    """(rows, is_alpaca_eval): id, dataset, instruction, reference, index (the position in
    AlpacaEval's 805, for its length-controlled model). `spec`: None for AlpacaEval's
    reference outputs under the data root, a JSON file in that format (instruction,
    output, dataset), or a pool whose `response` is the reference (`dataset` = its task).
    `limit`: the first N of each dataset."""
    from ..common.paths import data_root

    if spec is None:
        root = data_root("alpaca_eval")
        if root is None or not (root / "reference_outputs.json").is_file():
            raise TaskdivError("--suite judge: no AlpacaEval data (alpaca_eval/reference_outputs.json under the data "
                               "root, ../shared/data or --data-dir); pass --judge-data FILE or a pool with responses")
        spec = str(root / "reference_outputs.json")
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        frame = outputs_frame(path)
        frame = frame.rename(columns={"output": "reference"})
        frame["index"] = np.arange(len(frame))
        frame["id"] = [f"{i:04d}" for i in frame["index"]]
        alpaca = len(frame) == 805 and (frame.get("generator") == "gpt4_1106_preview").all()
    else:
        from ..pool.load import load_pool

        pool = load_pool(spec, require_tasks=False).frame
        if "response" not in pool.columns or pool["response"].isna().any():
            raise DataError("--suite judge: every row needs a 'response' (the reference answer)", file=spec)
        frame = pd.DataFrame({"id": pool["id"], "instruction": pool["prompt"], "reference": pool["response"],
                              "dataset": pool["task"] if "task" in pool.columns else "all"})
        frame["index"] = np.arange(len(frame))
        alpaca = False
    if "dataset" not in frame.columns:
        frame["dataset"] = "all"
    if limit is not None:
        frame = frame.groupby("dataset", sort=False, group_keys=False).head(limit)
    return frame[["id", "dataset", "instruction", "reference", "index"]].reset_index(drop=True), bool(alpaca)


def outputs_frame(path: Path) -> pd.DataFrame:
    """An alpaca_eval outputs file (a JSON list, or JSONL, of {instruction, output, ...})."""
    from ..common.inputs import iter_jsonl, read_json_document

    rows = read_json_document(path) if path.suffix == ".json" else [r for _, r in iter_jsonl(path)]
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise DataError("expected a JSON list of objects with 'instruction' and 'output'", file=str(path))
    frame = pd.DataFrame(rows)
    for col in ("instruction", "output"):
        if col not in frame.columns:
            raise DataError(f"no '{col}' field", file=str(path), field=col)
        bad = frame[col].map(lambda v: not isinstance(v, str))
        if bad.any():
            raise DataError(f"{int(bad.sum())} row(s) whose '{col}' is not text (first: row {int(bad.idxmax()) + 1})",
                            file=str(path), field=col)
    return frame


def is_outputs_file(name: str) -> bool:
    """RUN_OR_MODEL names model outputs (a .json/.jsonl file of instruction + output), not a model."""
    path = Path(name)
    return path.suffix in (".json", ".jsonl") and path.is_file()


def given_answers(path: str, frame: pd.DataFrame) -> dict[str, str]:
    """{id: output} from an outputs file, matched to the reference rows by instruction."""
    outs = outputs_frame(Path(path)).drop_duplicates("instruction").set_index("instruction")["output"]
    missing = ~frame["instruction"].isin(outs.index)
    if missing.any():
        raise DataError(f"no output for {int(missing.sum())} of {len(frame)} instruction(s) (first: "
                        f"{frame['instruction'][missing].iloc[0][:60]!r})", file=path, field="instruction")
    return dict(zip(frame["id"], outs.loc[frame["instruction"]].to_numpy()))


# ----------------------------------------------------------------------------- cache


class VerdictCache:
    """Judge completions in SQLite, one row per (judge, annotator config, prompt); each
    written (committed) as it returns."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(str(path), timeout=60)
        try:
            self.conn.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, judge TEXT, config TEXT, "
                              "completion TEXT, created REAL)")
        except sqlite3.DatabaseError as e:
            raise TaskdivError(f"{path}: not a verdict cache ({e}); move it away or pass --judge-cache") from None

    def get(self, keys: list[str]) -> dict[str, dict]:
        out = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(f"SELECT key, completion FROM verdicts WHERE key IN ({marks})", chunk).fetchall()
            out.update({k: json.loads(c) for k, c in rows})
        return out

    def put(self, key: str, judge: str, config: str, completion: dict) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?)",
                              (key, judge, config, json.dumps(completion), time.time()))

    def close(self) -> None:
        self.conn.close()


def sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------- the judge


class Judge:
    """A judge behind an OpenAI-compatible server, with alpaca_eval's annotator config `config`.

    `reach()` checks the server within REACH_TIMEOUT_S; `annotate(frame)` judges the rows
    (instruction, reference, answer) and returns one record per verdict."""

    def __init__(self, url: str, model: str, *, config: str = DEFAULT_CONFIG, order: str = "random",
                 concurrency: int = 4, timeout: float = 120.0, retries: int = 6, cache: Path | None = None):
        ae = alpaca_eval()
        from alpaca_eval import constants, utils

        self.url = url.rstrip("/")
        self.base_url = self.url if self.url.endswith("/v1") else self.url + "/v1"
        self.model, self.config_name, self.order = model, config, order
        self.concurrency, self.timeout, self.retries = concurrency, timeout, retries
        cfg_path = Path(config)
        if not cfg_path.exists():
            cfg_path = constants.EVALUATORS_CONFIG_DIR / config
        if cfg_path.is_dir():
            cfg_path = cfg_path / "configs.yaml"
        if not cfg_path.is_file():
            names = sorted(p.name for p in constants.EVALUATORS_CONFIG_DIR.iterdir() if (p / "configs.yaml").exists())
            from ..common.errors import unknown_name

            raise unknown_name("--judge-config", config, names)
        configs = utils.load_configs(cfg_path)
        (self.annotator_name, spec), = configs.items()
        self.spec = dict(spec)
        self.base_dir = cfg_path.parents[1]
        template = utils.read_or_return(self.spec["prompt_template"], relative_to=self.base_dir)
        kwargs = dict(self.spec.get("completions_kwargs") or {})
        if kwargs.get("tokens_to_favor") or kwargs.get("tokens_to_avoid"):
            raise TaskdivError(f"--judge-config {config}: tokens_to_favor/avoid need OpenAI's own tokenizer "
                               "(tiktoken logit biases); choose another config")
        self.decoding = {k: v for k, v in kwargs.items() if k not in _DECODER_ONLY}
        self.prompt_config = {"name": self.annotator_name, "prompt_template": str(self.spec["prompt_template"]),
                              "template_sha256": hashlib.sha256(template.encode()).hexdigest(),
                              "parser": self.spec.get("fn_completion_parser", "regex_parser"),
                              "parser_kwargs": self.spec.get("completion_parser_kwargs"),
                              "completion_key": self.spec.get("completion_key", "completions"),
                              "alpaca_eval": ae.__version__}
        from ..common.paths import cache_dir

        self.cache = VerdictCache(cache or cache_dir("judge") / "verdicts.sqlite")
        self.owner = None
        self.client = None
        self.asked = self.reused = self.refused = 0
        self.seconds = 0.0

    # -- the server

    def reach(self) -> None:
        """The server answers /v1/models and serves --judge-model, or a TaskdivError (within ~10 s)."""
        import openai

        probe = openai.OpenAI(base_url=self.base_url, api_key=api_key() or "EMPTY", timeout=REACH_TIMEOUT_S,
                              max_retries=0)
        try:
            served = {m.id: m for m in probe.models.list()}
        except openai.AuthenticationError:
            raise TaskdivError(f"--judge-url {self.url}: the server refused the key (401); set "
                               f"{' or '.join(KEY_ENV)}") from None
        except openai.NotFoundError:
            raise TaskdivError(f"--judge-url {self.url}: no OpenAI-compatible API there ({self.base_url}/models: "
                               f"404); give the server's address, e.g. http://HOST:PORT") from None
        except openai.APITimeoutError:
            raise TaskdivError(f"--judge-url {self.url}: no answer within {REACH_TIMEOUT_S:g} s") from None
        except openai.APIConnectionError as e:
            raise TaskdivError(f"--judge-url {self.url}: no server answers ({e.__cause__ or e})") from None
        except openai.APIStatusError as e:
            raise TaskdivError(f"--judge-url {self.url}: {self.base_url}/models answered {e.status_code}") from None
        if self.model not in served:
            shown = ", ".join(sorted(served)[:10]) or "no model"
            raise TaskdivError(f"--judge-model {self.model}: {self.url} serves {shown}")
        self.owner = getattr(served[self.model], "owned_by", None)
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key() or "EMPTY", timeout=self.timeout,
                                    max_retries=self.retries)

    @property
    def judge_key(self) -> dict:
        return {"model": self.model, "owned_by": self.owner}

    def describe(self) -> dict:
        """What results.json records of the judge (no key, no address credentials)."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.url)  # user:password@ never recorded
        url = urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
        return {"model": self.model, "url": url, "owned_by": self.owner, "config": self.prompt_config,
                "decoding": self.decoding, "order": self.order, "api": "chat.completions"}

    def _prompt_key(self, prompt: str) -> str:
        return sha({"judge": self.judge_key, "config": self.prompt_config, "decoding": self.decoding,
                    "prompt": prompt})

    def _messages(self, prompt: str) -> list[dict]:
        from alpaca_eval import utils

        prompt = prompt.strip()
        if prompt.startswith("<|im_start|>"):
            return utils.prompt_to_chatml(prompt)
        return [{"role": "user", "content": prompt}]

    def _ask(self, prompt: str) -> dict:
        reply = self.client.chat.completions.create(model=self.model, messages=self._messages(prompt),
                                                    **self.decoding)
        choice = reply.choices[0].model_dump()
        message = reply.choices[0].message
        text = message.content or ""
        if message.tool_calls:  # the *_fn configs: the JSON is in the function call (as alpaca_eval reads it)
            text = message.tool_calls[0].function.arguments
        choice["text"] = text or " "
        return choice

    def fn_completions(self, prompts, **_ignored) -> dict:
        """alpaca_eval's decoder contract: the prompts' completions (cached, concurrent)."""
        keys = [self._prompt_key(p) for p in prompts]
        found = self.cache.get(list(set(keys)))
        todo = {k: p for k, p in zip(keys, prompts) if k not in found}
        self.reused += len(set(keys)) - len(todo)
        start = time.perf_counter()
        if todo:
            import openai

            from ..common.progress import bar

            pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(todo)), thread_name_prefix="taskdiv-judge")
            futures = {}
            try:
                with bar(total=len(todo), desc="judge", unit="verdict") as pbar:
                    items = iter(todo.items())
                    for k, p in items:
                        futures[pool.submit(self._ask, p)] = k
                        if len(futures) >= self.concurrency:
                            break
                    while futures:
                        done, _ = wait(futures, return_when=FIRST_COMPLETED)
                        for fut in done:
                            k = futures.pop(fut)
                            try:
                                found[k] = fut.result()
                                self.cache.put(k, self.model, self.annotator_name, found[k])
                            except openai.BadRequestError as e:  # this prompt only (e.g. beyond the context)
                                found[k] = {"text": "", "logprobs": None, "error": str(e)[:300]}  # not cached
                                self.refused += 1
                            self.asked += 1
                            pbar.update(1)
                            nxt = next(items, None)
                            if nxt is not None:
                                futures[pool.submit(self._ask, nxt[1])] = nxt[0]
            except openai.OpenAIError as e:
                retried = isinstance(e, (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError))
                raise TaskdivError(f"the judge at {self.url} failed{f' after {self.retries} retries' if retried else ''}"
                                   f": {str(e)[:300]} ({self.asked} verdict(s) of this run are cached; rerun to "
                                   f"resume)") from None
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
        self.seconds += time.perf_counter() - start
        completions = [found[k] for k in keys]
        return {"completions": [c["text"] for c in completions], "completions_all": completions,
                "price_per_example": [np.nan] * len(keys), "time_per_example": [np.nan] * len(keys)}

    # -- verdicts

    def annotator(self, randomize: bool):
        from alpaca_eval.annotators.pairwise_evaluator import SinglePairwiseAnnotator

        spec = {k: v for k, v in self.spec.items() if k not in ("fn_completions", "pretty_name", "link")}
        return SinglePairwiseAnnotator(**spec, fn_completions=self.fn_completions, base_dir=self.base_dir, seed=0,
                                       is_randomize_output_order=randomize, annotation_column="preference",
                                       completion_column="raw_completion")

    def annotate(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One record per verdict: id, dataset, first ('reference' or 'answer': shown first),
        preference (alpaca_eval's: 1 the reference wins, 2 the answer wins, NaN unreadable),
        p_first (the probability that the output shown first wins)."""
        df = pd.DataFrame({"id": frame["id"].astype(str), "instruction": frame["instruction"],
                           "output_1": frame["reference"], "output_2": frame["answer"]})
        if self.order == "random":
            ann = self.annotator(True)
            switch = next(p for p in ann.processors if hasattr(p, "_switch_column"))
            flags = switch.preprocess(df)[switch._switch_column].to_numpy()
            parts = [(ann, df, np.where(flags, "answer", "reference"))]
        else:
            ann = self.annotator(False)
            swapped = df.rename(columns={"output_1": "output_2", "output_2": "output_1"})
            parts = [(ann, df, np.full(len(df), "reference")), (ann, swapped, np.full(len(df), "answer"))]
        records = []
        for ann, part, first in parts:
            same = part["output_1"] == part["output_2"]  # alpaca_eval's rule: identical outputs draw
            with _quiet_alpaca_eval():
                done = ann(part[~same]) if (~same).any() else part.iloc[:0].assign(preference=[])
            pref = dict(zip(done["id"], done["preference"]))
            for i, f, s in zip(part["id"], first, same):
                p = 1.5 if s else pref.get(i, np.nan)
                p = np.nan if p is None else float(p)
                swapped_here = part is not df and self.order == "both"
                if swapped_here and p == p:
                    p = 3.0 - p  # alpaca_eval's orientation: output_1 is the reference
                records.append({"id": i, "first": f, "preference": p})
        out = pd.DataFrame(records)
        out["dataset"] = out["id"].map(dict(zip(frame["id"].astype(str), frame["dataset"])))
        # P(the reference wins) = 2 - preference; the first shown wins with that or its complement.
        ref_wins = 2.0 - out["preference"]
        out["p_first"] = np.where(out["first"] == "reference", ref_wins, 1.0 - ref_wins)
        return out[["id", "dataset", "first", "preference", "p_first"]]

    def close(self) -> None:
        self.cache.close()


class _quiet_alpaca_eval:
    """alpaca_eval logs each unreadable verdict (with the whole completion) on the root
    logger; taskdiv counts them and says so once. Its records are dropped below ERROR."""

    @staticmethod
    def _filter(record) -> bool:
        return record.levelno >= logging.ERROR or "alpaca_eval" not in record.pathname

    def __enter__(self):
        self.handlers = list(logging.getLogger().handlers)
        for h in self.handlers:
            h.addFilter(self._filter)

    def __exit__(self, *exc):
        for h in self.handlers:
            h.removeFilter(self._filter)


# ----------------------------------------------------------------------------- metrics


def pair_preferences(verdicts: pd.DataFrame) -> pd.DataFrame:
    """One row per instruction: the mean of its readable verdicts' preferences (NaN: none)."""
    g = verdicts.groupby("id", sort=False)
    return pd.DataFrame({"dataset": g["dataset"].first(), "preference": g["preference"].mean(),
                         "verdicts": g["preference"].count()})


def winrate(preferences: pd.Series) -> dict:
    """alpaca_eval's win rate (percent; draws half) with a 95% normal interval from its standard error."""
    from alpaca_eval.metrics import get_winrate

    prefs = preferences.dropna()
    if not len(prefs):
        return {"n": 0, "win_rate": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    m = get_winrate([{"preference": p} for p in prefs])
    wr, se = float(m["win_rate"]), float(m["standard_error"])
    return {"n": int(len(prefs)), "win_rate": wr, "standard_error": se,
            "ci_low": max(0.0, wr - 1.96 * se) if se == se else float("nan"),
            "ci_high": min(100.0, wr + 1.96 * se) if se == se else float("nan"),
            "discrete_win_rate": float(m["discrete_win_rate"]), "n_wins": int(m["n_wins"]),
            "n_wins_base": int(m["n_wins_base"]), "n_draws": int(m["n_draws"])}


def position_bias(verdicts: pd.DataFrame, order: str) -> dict:
    """How much more the judge prefers the output shown first than an unbiased judge (0.5)."""
    read = verdicts.dropna(subset=["preference"])
    out = {"p_first_wins": float(read["p_first"].mean()) if len(read) else float("nan")}
    out["bias"] = out["p_first_wins"] - 0.5
    if order == "both":
        wide = read.pivot_table(index="id", columns="first", values="preference")
        if {"reference", "answer"} <= set(wide.columns):
            wide = wide.dropna()
            agree = np.sign(wide["reference"] - 1.5) == np.sign(wide["answer"] - 1.5)
            out["pairs_both_read"] = int(len(wide))
            out["agreement"] = float(agree.mean()) if len(wide) else float("nan")
    return out


def lc_files(lc_data: str | None) -> tuple[dict | None, str]:
    """(paths of df_gamed.csv and instruction_difficulty.csv, where from), or (None, why not):
    --lc-data DIR, else the AlpacaEval folder of the data root, else the hub dataset
    tatsu-lab/alpaca_eval (as alpaca_eval downloads them)."""
    from ..common.paths import data_root

    for d in ([Path(lc_data)] if lc_data else []) + ([data_root("alpaca_eval")] if data_root("alpaca_eval") else []):
        if all((d / f).is_file() for f in LC_FILES):
            return {f: str(d / f) for f in LC_FILES}, str(d)
    if lc_data:
        raise TaskdivError(f"--lc-data {lc_data}: needs {' and '.join(LC_FILES)}")
    try:
        import socket

        from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

        cached = {f: try_to_load_from_cache("tatsu-lab/alpaca_eval", f, repo_type="dataset") for f in LC_FILES}
        if all(isinstance(p, str) for p in cached.values()):
            return cached, "hub dataset tatsu-lab/alpaca_eval (local cache)"
        if constants.HF_HUB_OFFLINE:
            return None, "offline (HF_HUB_OFFLINE) and not in the hub cache"
        # One quick look before the hub client's own retries (about 25 s on a machine without DNS).
        socket.create_connection((constants.ENDPOINT.split("//")[-1].split("/")[0], 443), timeout=5).close()
        return {f: hf_hub_download("tatsu-lab/alpaca_eval", f, repo_type="dataset") for f in LC_FILES}, \
            "hub dataset tatsu-lab/alpaca_eval"
    except Exception as e:  # offline, unreachable, no huggingface_hub: the minimal model instead
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def length_controlled(pairs: pd.DataFrame, answers: pd.DataFrame, alpaca: bool, lc_data: str | None) -> dict:
    """The length-controlled win rate. With AlpacaEval's instructions and its two files (see
    `lc_files`): alpaca_eval's `length_controlled_v1`, as the leaderboard computes it. Else
    the package's `length_controlled_minimal` formula (tanh of the standardised length
    difference, no instruction difficulty, no regularisation towards its gamed baselines),
    fitted with its own helpers on this run's annotations alone."""
    from alpaca_eval.metrics import glm_winrate

    rows = pairs.dropna(subset=["preference"]).join(answers.set_index("id")[["reference", "answer", "index"]])
    if len(rows) < 2:
        return {"method": None, "length_controlled_winrate": float("nan"), "note": "fewer than 2 judged pairs"}
    df = pd.DataFrame({"preference": rows["preference"].to_numpy(), "output_1": rows["reference"].to_numpy(),
                       "output_2": rows["answer"].to_numpy(), "generator_1": "reference", "generator_2": "model",
                       "annotator": "judge"}, index=rows["index"].to_numpy())
    files, source = lc_files(lc_data) if alpaca else (None, "not AlpacaEval's 805 instructions")
    if files is not None:
        from unittest import mock

        with mock.patch.object(glm_winrate, "hf_hub_download", lambda repo_id, filename, **kw: files[filename]), \
                _quiet_alpaca_eval(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="sklearn")
            m = glm_winrate.get_length_controlled_winrate(df, glm_name="length_controlled_v1", save_weights_dir=None,
                                                          is_add_glm_preference_inplace=False)
        return {"method": "length_controlled_v1", "source": source,
                "length_controlled_winrate": float(m["length_controlled_winrate"]),
                "standard_error": float(m["lc_standard_error"])}
    info = glm_winrate.GLM_INFO["length_controlled_minimal"]
    feat = df.reset_index()
    delta = feat["output_1"].str.len() - feat["output_2"].str.len()
    feat = pd.DataFrame({"preference": feat["preference"].astype(float) - 1,
                         "std_delta_len": delta / delta.std() if delta.std() > 0 else delta * 0.0,
                         "not_gamed_baseline": True})
    test = feat[["not_gamed_baseline"]].assign(std_delta_len=0.0)
    train, x_test = glm_winrate.make_dmatrix_for_model(feat, test, formula=info["formula"])
    n_splits = info["kwargs"]["n_splits"] if len(feat) >= 2 * info["kwargs"]["n_splits"] else 0
    with _quiet_alpaca_eval(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="sklearn")  # its notices about alpaca_eval's (deprecated) arguments
        model = glm_winrate.fit_LogisticRegressionCV(train, "preference", is_ytrue_proba=True, n_splits=n_splits)
    pred = model.predict_proba(x_test)[:, 1]
    return {"method": "length_controlled_minimal, fitted on this run's annotations alone",
            "why_not_v1": source, "length_controlled_winrate": float(pred.mean() * 100),
            # The formula has no per-instruction term: one prediction for all, no spread to report.
            "standard_error": None}


# ----------------------------------------------------------------------------- the suite

OUTPUTS = ("answers.jsonl", "verdicts.jsonl", "per_task.csv", "results.json")
# Options that change neither an answer nor a verdict (transport, cache location).
TRANSPORT = ("out", "batch_size", "judge_url", "judge_concurrency", "judge_timeout", "judge_retries", "judge_cache",
             "vllm_url", "vllm_python", "seed", "n_boot")


def run(cfg) -> dict:
    """`taskdiv evaluate RUN --suite judge`: answers, verdicts, win rates; writes OUTPUTS into cfg.out."""
    from ..common.atomic import output_set
    from ..common.config import to_dict
    from ..common.inputs import file_sha256
    from ..common.outputs import check_output_dir
    from ..common.writers import dump_jsonl, dump_table, dumps_json
    from ..engines import models

    out = Path(cfg.out)
    check_output_dir(out, OUTPUTS, inputs=[cfg.judge_data, cfg.model, cfg.judge_cache])  # outputs of a model given
    frame, alpaca = load_reference(cfg.judge_data, cfg.limit)
    judge = Judge(cfg.judge_url, cfg.judge_model, config=cfg.judge_config, order=cfg.judge_order,
                  concurrency=cfg.judge_concurrency, timeout=cfg.judge_timeout, retries=cfg.judge_retries,
                  cache=Path(cfg.judge_cache) if cfg.judge_cache else None)
    try:
        judge.reach()  # before generating: a wrong address fails now, not after an hour of answers
        data_sha = sha(frame.to_dict(orient="list"))
        key = {**to_dict(cfg, exclude=TRANSPORT), "data_sha256": data_sha, "judge": judge.describe()}
        if is_outputs_file(cfg.model):
            answers, gen = given_answers(cfg.model, frame), {"from_file": cfg.model}
            key["model_sha256"] = file_sha256(cfg.model)
            generator = Path(cfg.model).stem
        else:
            ref = models.resolve(cfg.model)
            tok = models.load_tokenizer(ref)
            chat = models.choose_chat(ref, tok, cfg.chat_template)
            dtype = models.dtype_name(cfg.dtype)
            answer_key = {"fingerprint": models.fingerprint(ref), "chat": chat, "dtype": dtype,
                          "max_answer_tokens": cfg.max_answer_tokens, "engine": cfg.engine, "data_sha256": data_sha}
            key.update(answer_key)
            answers, gen = _earlier_answers(out, answer_key, frame)
            if answers is None:
                from . import answers as answering

                answers, gen = answering.generate(cfg, ref, tok, chat, frame, out / ".answers.partial.jsonl",
                                                  json.dumps(answer_key, sort_keys=True))
                gen.update(chat=chat, dtype=dtype, greedy=True, max_answer_tokens=cfg.max_answer_tokens)
            generator = ref.name
        frame = frame.assign(answer=frame["id"].map(answers))
        verdicts = judge.annotate(frame)
        log.info("%d verdict(s): %d asked, %d reused from the cache (%s)", len(verdicts), judge.asked, judge.reused,
                 judge.cache.path)
    finally:
        judge.close()
    results = summarise(verdicts, frame, alpaca, cfg, judge)
    results.update(suite="judge", model=cfg.model, generation=gen, config=json.loads(json.dumps(key, default=str)))
    table = pd.DataFrame([{"task": d, **{k: v[k] for k in ("n", "win_rate", "ci_low", "ci_high")}}
                          for d, v in [*results["datasets"].items(), ("overall", results["win_rate"])]])
    answer_rows = [{"id": i, "dataset": d, "instruction": ins, "output": a, "generator": generator}
                   for i, d, ins, a in zip(frame["id"], frame["dataset"], frame["instruction"], frame["answer"])]
    with output_set(*(out / name for name in OUTPUTS)) as (ans_tmp, ver_tmp, table_tmp, results_tmp):
        dump_jsonl(ans_tmp, answer_rows)
        dump_jsonl(ver_tmp, verdicts.to_dict(orient="records"))
        dump_table(table_tmp, table, ".csv")
        results_tmp.write_text(dumps_json(results), encoding="utf-8")
    (out / ".answers.partial.jsonl").unlink(missing_ok=True)
    results["table"] = format_table(results)
    return results


def _earlier_answers(out: Path, answer_key: dict, frame: pd.DataFrame):
    """(answers, generation info) of an earlier run in `out` with the same model, settings and
    instructions (another judge, say), or (None, None)."""
    from ..common.inputs import iter_jsonl

    try:
        old = json.loads((out / "results.json").read_text(encoding="utf-8"))
        rows = {r["id"]: r["output"] for _, r in iter_jsonl(out / "answers.jsonl")}
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    config = old.get("config") or {}
    if any(config.get(k) != v for k, v in json.loads(json.dumps(answer_key)).items()) or set(rows) != set(frame["id"]):
        return None, None
    log.info("%s: the answers of an earlier run with the same model and settings; reused", out / "answers.jsonl")
    return rows, {**(old.get("generation") or {}), "reused_from": str(out / "answers.jsonl")}


def summarise(verdicts: pd.DataFrame, frame: pd.DataFrame, alpaca: bool, cfg, judge: Judge) -> dict:
    pairs = pair_preferences(verdicts)
    unread = int(verdicts["preference"].isna().sum())
    results = {"win_rate": winrate(pairs["preference"]),
               "datasets": {d: winrate(g["preference"]) for d, g in pairs.groupby("dataset", sort=True)},
               "length_controlled": length_controlled(pairs, frame, alpaca, cfg.lc_data),
               "position_bias": position_bias(verdicts, judge.order),
               "verdicts": {"total": len(verdicts), "asked": judge.asked, "reused": judge.reused,
                            "unparsed": unread, "refused": judge.refused,
                            "instructions_without_verdict": int(pairs["preference"].isna().sum()),
                            "seconds": round(judge.seconds, 2),
                            "seconds_per_verdict": round(judge.seconds / judge.asked, 3) if judge.asked else None},
               "judge": judge.describe(), "instructions": len(frame), "alpaca_eval_set": alpaca}
    # What experiments and report read (the heldout suite's shape): the win rate as a fraction.
    wr = results["win_rate"]
    results["macro"] = {"n_tasks": len(results["datasets"]), "n": wr["n"], "accuracy": wr["win_rate"] / 100,
                        "ci_low": wr["ci_low"] / 100, "ci_high": wr["ci_high"] / 100}
    if unread:
        log.warning("%d of %d verdict(s) could not be parsed (%s; %d of them refused by the server, e.g. a prompt "
                    "beyond its context, not cached): left out of the win rate, not counted as losses",
                    unread, len(verdicts), judge.prompt_config["parser"], judge.refused)
    return results


def format_table(results: dict) -> str:
    lines = [f"{'dataset':<14} {'n':>4}  win rate [95% CI]"]
    for d, v in [*results["datasets"].items(), ("overall", results["win_rate"])]:
        lines.append(f"{d:<14} {v['n']:>4}  {v['win_rate']:5.1f} [{v['ci_low']:5.1f}, {v['ci_high']:5.1f}]")
    lc, pb, vd = results["length_controlled"], results["position_bias"], results["verdicts"]
    lines.append(f"length-controlled win rate {lc['length_controlled_winrate']:.1f} ({lc['method']})")
    order = results["judge"]["order"]
    lines.append(f"order: {order}; the output shown first wins {pb['p_first_wins']:.2f} (position bias "
                 f"{pb['bias']:+.2f})" + (f"; both orders agree on {pb['agreement']:.0%} of "
                                          f"{pb['pairs_both_read']} pair(s)" if "agreement" in pb else ""))
    lines.append(f"verdicts: {vd['total']} ({vd['asked']} asked, {vd['reused']} reused from the cache); "
                 f"{vd['unparsed']} unparsed")
    return "\n".join(lines)
