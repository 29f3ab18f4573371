"""The judge suite: `taskdiv evaluate --suite judge`.

A fake OpenAI-compatible server (a thread in this process) stands in for the judge in the
tests of the transport: retries on 429 and 5xx, an unparseable verdict, the cache on a
rerun, both orders and the position bias, a wrong or unreachable address. The metrics are
tested on verdicts made up here. One test (marked `vllm`) runs the whole suite against
the real local vLLM server of the session (SmolLM2-135M-Instruct as the judge) on five
AlpacaEval instructions, answered by SmolLM2 itself, and reruns it from the cache.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from taskdiv.cli import main
from taskdiv.common.paths import data_root
from taskdiv.evaluation import judge

judge.alpaca_eval()  # alpaca-eval is in taskdiv[all]: its absence fails here, with the hint

FAKE = "fake-judge"


# ----------------------------------------------------------------------------- a fake judge


class FakeJudge(BaseHTTPRequestHandler):
    """/v1/models serves FAKE; /v1/chat/completions answers alpaca_eval's m/M prompt with
    top logprobs that prefer the longer output (so the verdict is known), none of m/M
    when the instruction holds 'UNREADABLE', and first the statuses queued in `fail`."""

    state: dict = {}

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: dict, headers: dict | None = None):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            return self._send(200, {"object": "list", "data": [{"id": FAKE, "object": "model", "owned_by": "test"}]})
        self._send(404, {"error": "not found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(self.state["delay"])
        with self.state["lock"]:
            self.state["requests"] += 1
            fail = self.state["fail"].pop(0) if self.state["fail"] else None
        if fail:
            return self._send(fail, {"error": {"message": f"status {fail}"}}, {"retry-after-ms": "10"})
        prompt = body["messages"][-1]["content"]
        if "TOOLONG" in prompt:
            return self._send(400, {"error": {"message": "This model's maximum context length is 4096 tokens"}})
        first, second = [part.split('"""')[0] for part in prompt.split('"output": """')[1:3]]
        if "UNREADABLE" in prompt:
            top = [("The", -0.1), ("Both", -2.0)]
        else:  # m: the first shown is better
            top = [("m", -0.1), ("M", -2.4)] if len(first) > len(second) else [("M", -0.1), ("m", -2.4)]
        content = [{"token": top[0][0], "logprob": top[0][1], "bytes": None,
                    "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in top]}]
        self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": FAKE,
                         "choices": [{"index": 0, "finish_reason": "length", "logprobs": {"content": content},
                                      "message": {"role": "assistant", "content": top[0][0]}}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@pytest.fixture
def fake_judge():
    FakeJudge.state = {"lock": threading.Lock(), "requests": 0, "fail": [], "delay": 0.0}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", FakeJudge.state
    server.shutdown()
    server.server_close()


@pytest.fixture
def judge_files(tmp_path):
    """A reference file in AlpacaEval's format (two datasets, six instructions) and a model's
    outputs: longer than the reference on a, c, d; shorter on b, e, f; 'f' unreadable."""
    names = "abcdef"
    ref = [{"dataset": "one" if n in "abc" else "two", "instruction": f"Task {n}" + (" UNREADABLE" if n == "f" else ""),
            "output": f"reference answer {n}", "generator": "ref"} for n in names]
    outs = [{"instruction": r["instruction"], "generator": "mine",
             "output": f"a much longer answer of the model to {n}" if n in "acd" else n} for n, r in zip(names, ref)]
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    (tmp_path / "outs.json").write_text(json.dumps(outs))
    return tmp_path / "ref.json", tmp_path / "outs.json"


def run_judge(url, ref, outs, out, *extra) -> int:
    return main(["evaluate", str(outs), "--suite", "judge", "--judge-url", url, "--judge-model", FAKE,
                 "--judge-data", str(ref), "--judge-cache", str(out.parent / "verdicts.sqlite"), "--out", str(out),
                 "--no-progress", *map(str, extra)])


# ----------------------------------------------------------------------------- with the fake judge


def test_win_rate_cache_and_unreadable_verdicts(fake_judge, judge_files, tmp_path, capsys):
    url, state = fake_judge
    ref, outs = judge_files
    state["fail"] = [429, 500, 503]  # retried with backoff, then answered
    assert run_judge(url, ref, outs, tmp_path / "r1", "--judge-concurrency", 2) == 0
    res = json.loads((tmp_path / "r1" / "results.json").read_text())
    # The fake prefers the longer output: the model wins a, c, d and loses b, e; f is unreadable.
    assert res["verdicts"]["unparsed"] == 1 and res["verdicts"]["instructions_without_verdict"] == 1
    assert res["win_rate"]["n"] == 5 and res["win_rate"]["n_wins"] == 3 and res["win_rate"]["n_wins_base"] == 2
    assert res["datasets"]["one"]["n"] == 3 and res["datasets"]["two"]["n"] == 2  # f is no loss: it is not there
    assert 50 < res["win_rate"]["win_rate"] < 70  # 3 of 5 with the logprob weights (not 3 of 6)
    assert res["verdicts"]["asked"] == 6 and res["verdicts"]["reused"] == 0 and state["requests"] == 6 + 3
    assert res["judge"]["model"] == FAKE and res["judge"]["config"]["name"] == "weighted_alpaca_eval_gpt4_turbo"
    assert res["judge"]["decoding"]["max_tokens"] == 1 and res["judge"]["order"] == "random"
    assert res["length_controlled"]["method"].startswith("length_controlled_minimal")
    table = pd.read_csv(tmp_path / "r1" / "per_task.csv")
    assert list(table["task"]) == ["one", "two", "overall"]
    assert len((tmp_path / "r1" / "verdicts.jsonl").read_text().splitlines()) == 6
    assert "1 unparsed" in capsys.readouterr().out

    # A rerun elsewhere asks nothing and says so.
    assert run_judge(url, ref, outs, tmp_path / "r2") == 0
    res2 = json.loads((tmp_path / "r2" / "results.json").read_text())
    assert res2["verdicts"]["asked"] == 0 and res2["verdicts"]["reused"] == 6 and state["requests"] == 9
    assert res2["win_rate"] == res["win_rate"]
    assert "0 asked, 6 reused" in capsys.readouterr().out


def test_a_prompt_the_server_refuses_is_counted_not_cached_and_asked_again(fake_judge, tmp_path):
    url, state = fake_judge
    ref = [{"dataset": "d", "instruction": f"Task {n}", "output": "reference"} for n in ("a", "TOOLONG")]
    outs = [{"instruction": r["instruction"], "output": "a longer answer"} for r in ref]
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    (tmp_path / "outs.json").write_text(json.dumps(outs))
    for attempt in (1, 2):
        assert run_judge(url, tmp_path / "ref.json", tmp_path / "outs.json", tmp_path / "r") == 0
        res = json.loads((tmp_path / "r" / "results.json").read_text())
        assert res["verdicts"]["refused"] == 1 and res["verdicts"]["unparsed"] == 1 and res["win_rate"]["n"] == 1
        assert res["verdicts"]["asked"] == (2 if attempt == 1 else 1)  # the refused one is asked again


def test_both_orders_and_the_position_bias(fake_judge, judge_files, tmp_path):
    url, state = fake_judge
    ref, outs = judge_files
    assert run_judge(url, ref, outs, tmp_path / "r", "--judge-order", "both") == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["verdicts"]["total"] == 12 and res["verdicts"]["unparsed"] == 2
    # The fake looks at lengths, not positions: both orders agree, the first shown wins half the time.
    assert res["position_bias"]["agreement"] == 1.0 and res["position_bias"]["pairs_both_read"] == 5
    assert abs(res["position_bias"]["bias"]) < 0.15
    assert res["win_rate"]["n_wins"] == 3


def test_an_unreachable_or_wrong_judge_fails_fast_and_clearly(fake_judge, judge_files, tmp_path, capsys):
    url, _ = fake_judge
    ref, outs = judge_files
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    start = time.monotonic()
    assert run_judge(dead, ref, outs, tmp_path / "a") == 1
    assert time.monotonic() - start < 30
    assert f"--judge-url {dead}: no server answers" in capsys.readouterr().err
    assert run_judge(url + "/somewhere", ref, outs, tmp_path / "b") == 1
    assert "no OpenAI-compatible API there" in capsys.readouterr().err
    assert main(["evaluate", str(outs), "--suite", "judge", "--judge-url", url, "--judge-model", "gpt-9",
                 "--judge-data", str(ref), "--out", str(tmp_path / "c")]) == 1
    assert f"--judge-model gpt-9: {url} serves {FAKE}" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "c" / "results.json").exists()


def test_an_output_that_would_replace_an_input_is_refused(fake_judge, tmp_path, capsys):
    """answers.jsonl / verdicts.jsonl in --out may not be the model outputs, the reference or the cache."""
    url, state = fake_judge
    ref = [{"dataset": "d", "instruction": "Task a", "output": "reference"}]
    (tmp_path / "answers.jsonl").write_text(json.dumps({"instruction": "Task a", "output": "mine"}) + "\n")
    (tmp_path / "verdicts.jsonl").write_text(json.dumps(ref[0]) + "\n")
    for outs, data in ((tmp_path / "answers.jsonl", None), (None, tmp_path / "verdicts.jsonl")):
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
        args = ["evaluate", str(outs or tmp_path / "answers.jsonl"), "--suite", "judge", "--judge-url", url,
                "--judge-model", FAKE, "--out", str(tmp_path), "--no-progress",
                "--judge-data", str(data or tmp_path / "verdicts.jsonl")]
        assert main(args) == 1
        assert "would replace the input" in capsys.readouterr().err
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert state["requests"] == 0


def test_a_killed_run_loses_only_the_requests_in_flight(fake_judge, judge_files, tmp_path):
    url, state = fake_judge
    ref, outs = judge_files
    state["delay"] = 1.0
    cache = tmp_path / "verdicts.sqlite"
    cmd = [sys.executable, "-m", "taskdiv.cli", "evaluate", str(outs), "--suite", "judge", "--judge-url", url,
           "--judge-model", FAKE, "--judge-data", str(ref), "--judge-cache", str(cache), "--judge-concurrency", "1",
           "--out", str(tmp_path / "r"), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(Path(judge.__file__).parents[2])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with sqlite3.connect(cache, timeout=1) as conn:
                    if conn.execute("SELECT count(*) FROM verdicts").fetchone()[0] >= 2:
                        break
            except sqlite3.Error:
                pass
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    with sqlite3.connect(cache) as conn:
        kept = conn.execute("SELECT count(*) FROM verdicts").fetchone()[0]
    assert 2 <= kept < 6
    state["delay"] = 0.0
    assert run_judge(url, ref, outs, tmp_path / "r") == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["verdicts"]["reused"] == kept and res["verdicts"]["asked"] == 6 - kept


@pytest.mark.slow
def test_an_experiment_with_the_judge_suite_reports_its_win_rate(fake_judge, judge_files, tmp_path, tiny_model_dir):
    from test_experiments import write_config

    url, _ = fake_judge
    ref, _ = judge_files
    judge_opts = {"judge_url": url, "judge_model": FAKE, "judge_data": str(ref),
                  "judge_cache": str(tmp_path / "verdicts.sqlite"), "max_answer_tokens": 8}
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, suites=["heldout", "judge"], budgets=[4], seeds=[0],
                       full=False, suite_options={"judge": judge_opts})
    assert main(["experiment", str(cfg), "--out", str(tmp_path / "exp")]) == 0
    results = pd.read_csv(tmp_path / "exp" / "results.csv")
    assert results["judge_win_rate"].between(0, 100).all() and len(results) == 3
    assert (tmp_path / "exp" / "runs" / "base" / "eval-judge" / "results.json").exists()
    assert main(["report", str(tmp_path / "exp")]) == 0
    assert "## Judge win rate" in (tmp_path / "exp" / "report.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--suite", "judge"], "needs --judge-url"),
    (["--suite", "heldout", "--judge-url", "http://x"], "--judge-url apply to --suite judge only"),
    (["--suite", "judge", "--judge-url", "http://x", "--judge-model", "m", "--judge-concurrency", "0"],
     "--judge-concurrency"),
])
def test_judge_options_are_checked_before_any_work(tmp_path, capsys, argv, message):
    assert main(["evaluate", "smollm2-135m-instruct", *argv, "--out", str(tmp_path / "o")]) == 1
    assert message in capsys.readouterr().err


def test_api_key_from_the_environment_only(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("TASKDIV_JUDGE_API_KEY", raising=False)
    assert judge.api_key() is None
    monkeypatch.setenv("OPENAI_API_KEY", "sk-b")
    monkeypatch.setenv("TASKDIV_JUDGE_API_KEY", "sk-a")
    assert judge.api_key() == "sk-a"
    from taskdiv.evaluation.commands import EvalConfig

    assert "key" not in " ".join(f.name for f in __import__("dataclasses").fields(EvalConfig))


# ----------------------------------------------------------------------------- data and metrics


def test_alpaca_eval_reference_and_limit_per_dataset():
    if data_root("alpaca_eval") is None:
        pytest.skip("no ../shared/data/alpaca_eval")
    full, alpaca = judge.load_reference(None, None)
    assert len(full) == 805 and alpaca and full["index"].tolist() == list(range(805))
    few, _ = judge.load_reference(None, 2)
    assert few.groupby("dataset").size().to_dict() == {d: 2 for d in full["dataset"].unique()}
    outs = judge.given_answers(str(data_root("alpaca_eval") / "model_outputs" / "gemma-2b-it.json"), few)
    assert set(outs) == set(few["id"])


def test_a_pool_with_responses_is_a_reference(small_pool):
    frame, alpaca = judge.load_reference(str(small_pool), 1)
    assert not alpaca and list(frame["dataset"]) == ["a", "b", "c"]
    assert frame["reference"].tolist() == ["answer 0"] * 3


def test_win_rate_interval_and_unread_verdicts_are_not_losses():
    verdicts = pd.DataFrame({"id": ["1", "1", "2", "2", "3", "3"], "dataset": ["x"] * 6,
                             "first": ["reference", "answer"] * 3,
                             "preference": [2.0, 2.0, 1.0, np.nan, np.nan, np.nan]})
    pairs = judge.pair_preferences(verdicts)
    assert pairs["preference"].tolist()[:2] == [2.0, 1.0] and np.isnan(pairs["preference"].iloc[2])
    wr = judge.winrate(pairs["preference"])
    assert wr["n"] == 2 and wr["win_rate"] == 50.0 and wr["ci_low"] <= 50 <= wr["ci_high"]


def test_position_bias_of_a_judge_that_always_picks_the_first():
    # The first shown always wins: preference 1 (the reference) when it is first, 2 when the answer is.
    verdicts = pd.DataFrame({"id": ["1", "1", "2", "2"], "dataset": "x", "first": ["reference", "answer"] * 2,
                             "preference": [1.0, 2.0, 1.0, 2.0]})
    verdicts["p_first"] = np.where(verdicts["first"] == "reference", 2 - verdicts["preference"],
                                   verdicts["preference"] - 1)
    pb = judge.position_bias(verdicts, "both")
    assert pb["bias"] == 0.5 and pb["agreement"] == 0.0


def test_length_controlled_v1_from_local_files_else_minimal(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    answers = pd.DataFrame({"id": [str(i) for i in range(n)], "index": range(n),
                            "reference": ["r" * int(x) for x in rng.integers(20, 200, n)],
                            "answer": ["a" * int(x) for x in rng.integers(20, 200, n)]})
    pairs = pd.DataFrame({"preference": 1 + rng.random(n)}, index=answers["id"])
    minimal = judge.length_controlled(pairs, answers, alpaca=False, lc_data=None)
    assert minimal["method"].startswith("length_controlled_minimal") and 0 < minimal["length_controlled_winrate"] < 100
    # alpaca_eval's two files, made up (their columns as the package reads them).
    gamed = pd.DataFrame({"model": "g", "index": np.tile(range(n), 2), "preference": rng.random(2 * n),
                          "std_delta_len": rng.normal(size=2 * n),
                          "instruction_difficulty": np.tile(rng.normal(size=n), 2), "not_gamed_baseline": False})
    gamed.to_csv(tmp_path / "df_gamed.csv", index=False)
    gamed.drop_duplicates("index")[["instruction_difficulty"]].to_csv(tmp_path / "instruction_difficulty.csv")
    v1 = judge.length_controlled(pairs, answers, alpaca=True, lc_data=str(tmp_path))
    assert v1["method"] == "length_controlled_v1" and v1["source"] == str(tmp_path)


def test_help_lists_the_judge_options(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "--judge-url" in text and "--judge-order" in text and "TASKDIV_JUDGE_API_KEY" in text


# ----------------------------------------------------------------------------- the real local judge


@pytest.mark.vllm
@pytest.mark.slow
def test_judge_suite_end_to_end_with_the_local_vllm_judge(vllm_server, tmp_path, capsys):
    """SmolLM2 answers one instruction of each AlpacaEval dataset (local engine, 48 tokens)
    and judges its answers against GPT-4's on the session's vLLM server; a rerun generates
    and asks nothing."""
    if data_root("alpaca_eval") is None:
        pytest.fail("the judge test needs ../shared/data/alpaca_eval")
    args = ["evaluate", "smollm2-135m-instruct", "--suite", "judge", "--judge-url", vllm_server.url,
            "--judge-model", "smollm2-135m-instruct", "--limit", "1", "--max-answer-tokens", "48",
            "--judge-cache", str(tmp_path / "verdicts.sqlite"), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "r1")]) == 0
    res = json.loads((tmp_path / "r1" / "results.json").read_text())
    assert res["instructions"] == 5 and res["alpaca_eval_set"] is True
    assert res["verdicts"]["total"] == 5 and res["verdicts"]["asked"] + res["verdicts"]["unparsed"] >= 5
    assert res["verdicts"]["reused"] == 0
    assert res["win_rate"]["n"] + res["verdicts"]["instructions_without_verdict"] == 5
    assert 0 <= res["win_rate"]["win_rate"] <= 100
    assert res["judge"]["model"] == "smollm2-135m-instruct" and res["judge"]["owned_by"] == "vllm"
    assert res["length_controlled"]["method"] is not None
    answers = [json.loads(line) for line in (tmp_path / "r1" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 5 and all(a["output"] for a in answers)
    assert res["generation"]["seconds_per_answer"] > 0
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "r1")]) == 0  # the rerun: no answer generated, no verdict asked
    res2 = json.loads((tmp_path / "r1" / "results.json").read_text())
    assert res2["generation"]["reused_from"] == str(tmp_path / "r1" / "answers.jsonl")
    assert res2["verdicts"]["asked"] == 0 and res2["verdicts"]["reused"] == 5
    assert res2["win_rate"] == res["win_rate"]
    assert "0 asked, 5 reused" in capsys.readouterr().out
    # The answers from the vLLM server instead (greedy, float32: mostly the same text, so mostly cached verdicts).
    assert main([*args, "--engine", "vllm", "--vllm-url", vllm_server.url, "--out", str(tmp_path / "r3")]) == 0
    res3 = json.loads((tmp_path / "r3" / "results.json").read_text())
    assert res3["config"]["engine"] == "vllm" and res3["verdicts"]["total"] == 5
    same = sum(a["output"] == b["output"] for a, b in zip(
        answers, map(json.loads, (tmp_path / "r3" / "answers.jsonl").read_text().splitlines())))
    assert res3["verdicts"]["reused"] >= same


def test_the_default_verdict_cache_is_a_part_of_taskdiv_cache(fake_judge, judge_files, tmp_path, capsys,
                                                               monkeypatch):
    """Without --judge-cache verdicts go to $TASKDIV_CACHE/judge, which `cache info` lists and
    `cache clear judge` removes (the next run asks the judge again)."""
    from taskdiv.common.paths import cache_dir

    monkeypatch.setenv("TASKDIV_CACHE", str(tmp_path / "cache"))
    url, state = fake_judge
    ref, outs = judge_files
    args = ["evaluate", str(outs), "--suite", "judge", "--judge-url", url, "--judge-model", FAKE,
            "--judge-data", str(ref), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert (cache_dir() / "judge" / "verdicts.sqlite").is_file()
    capsys.readouterr()
    assert main(["cache", "info"]) == 0
    assert "judge/" in capsys.readouterr().out
    assert main(["cache", "clear", "judge"]) == 0
    assert not (cache_dir() / "judge").exists()
    asked = state["requests"]
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert state["requests"] == 2 * asked
