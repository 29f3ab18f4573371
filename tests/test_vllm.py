"""The vLLM engine: `taskdiv score --engine vllm` against the local engine with a real vLLM
server on CPU, a killed run's resume and clean-up, and the server helper's start-up,
time-out and clean-up paths.

The real-vLLM tests (marked `vllm`) share one server for the session (the `vllm_server`
fixture, tests/conftest.py); only the killed run starts one of its own. The helper's tests
run a fake server (a small script standing in for `python -m vllm...`), in seconds.
"""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from taskdiv.cli import main
from taskdiv.common.errors import TaskdivError

# 32 real prompts, two tasks (8 of them repeat another's text: 24 distinct prompts).
POOL = "bench:bbh/sports_understanding,gauntlet/bigbench_simple_arithmetic?max_pool=16"
MODEL = "smollm2-135m-instruct"
# |mean_prob(vLLM) - mean_prob(local)| on a prompt whose greedy tokens agree, float32.
# Measured on these 32 prompts: at most 1.2e-6 (both compute in float32; the kernels differ).
MEAN_PROB_TOL = 1e-4


def score(args) -> int:
    return main(["score", *map(str, args)])


def cache_rows(out: Path) -> dict[str, tuple[list[int], np.ndarray]]:
    """{prompt sha: (token ids, logprobs)} of every row of OUT/cache.sqlite (one settings key)."""
    with sqlite3.connect(out / "cache.sqlite") as conn:
        keys = [k for (k,) in conn.execute("SELECT DISTINCT settings FROM scores")]
        assert len(keys) == 1, keys
        rows = conn.execute("SELECT prompt_sha, token_ids, logprobs FROM scores").fetchall()
    return {sha: (np.frombuffer(ids, np.int32).tolist(), np.frombuffer(lp, np.float32)) for sha, ids, lp in rows}


def stored(out: Path) -> int:
    try:
        with sqlite3.connect(out / "cache.sqlite", timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM scores").fetchone()[0]
    except sqlite3.Error:
        return 0


def live_group(pgid: int) -> list[int]:
    """The processes of group `pgid` that are not zombies."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(d.name))
    return pids


def wait_gone(pgid: int, seconds: float) -> list[int]:
    end = time.time() + seconds
    while live_group(pgid) and time.time() < end:
        time.sleep(0.2)
    return live_group(pgid)


# ----------------------------------------------------------------------------- real vLLM


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_agrees_with_the_local_engine(vllm_server, tmp_path, capsys):
    """float32, 32 prompts: the same greedy tokens wherever the paths agree (here: all), mean_prob
    within MEAN_PROB_TOL, task means within 0.01; the same columns, mean_entropy NaN."""
    common = [POOL, "--model", MODEL, "--dtype", "float32", "--max-new-tokens", "24"]
    assert score([*common, "--out", tmp_path / "local"]) == 0
    assert score([*common, "--engine", "vllm", "--vllm-url", vllm_server.url, "--out", tmp_path / "vllm"]) == 0
    assert "(vllm)" not in capsys.readouterr().err  # no progress bar under --no-progress/TASKDIV_NO_PROGRESS
    local, vllm = cache_rows(tmp_path / "local"), cache_rows(tmp_path / "vllm")
    assert set(local) == set(vllm) and len(local) == 24
    same = 0
    for sha, (ids, lp) in local.items():
        v_ids, v_lp = vllm[sha]
        k = next((i for i, (a, b) in enumerate(zip(ids, v_ids)) if a != b), min(len(ids), len(v_ids)))
        # Up to where the greedy paths part, the same tokens and the same logprobs.
        np.testing.assert_allclose(np.exp(v_lp[:k]), np.exp(lp[:k]), atol=MEAN_PROB_TOL)
        same += ids == v_ids
    assert same == len(local)  # measured: every path agrees in float32
    a = pd.read_csv(tmp_path / "local" / "scores.csv").set_index("id")
    b = pd.read_csv(tmp_path / "vllm" / "scores.csv").set_index("id").loc[a.index]
    assert list(a.columns) == list(b.columns)
    assert (a["generated"].fillna("") == b["generated"].fillna("")).all()
    assert np.abs(a["mean_prob"] - b["mean_prob"]).max() < MEAN_PROB_TOL
    assert b["mean_entropy"].isna().all() and a["mean_entropy"].notna().all()
    ta = pd.read_csv(tmp_path / "local" / "tasks.csv").set_index("task")
    tb = pd.read_csv(tmp_path / "vllm" / "tasks.csv").set_index("task").loc[ta.index]
    assert np.abs(ta["confidence"] - tb["confidence"]).max() < 0.01
    # The engine is part of the settings key: the two caches hold different keys.
    import yaml

    keys = [yaml.safe_load((tmp_path / d / "config.yaml").read_text())["resolved"]["settings_key"]
            for d in ("local", "vllm")]
    assert keys[0] != keys[1]


@pytest.mark.slow
@pytest.mark.vllm
def test_per_task_and_target_ci_run_under_vllm(vllm_server, tmp_path, capsys):
    """--per-task and --target-ci go through the same rounds as with the local engine, and a
    rerun reuses every row."""
    args = [POOL, "--model", MODEL, "--dtype", "float32", "--max-new-tokens", "8", "--per-task", "4",
            "--target-ci", "0.05", "--engine", "vllm", "--vllm-url", vllm_server.url, "--out", tmp_path / "s"]
    assert score(args) == 0
    first = capsys.readouterr().out
    scores = pd.read_csv(tmp_path / "s" / "scores.csv")
    assert len(scores) > 8 and scores["id"].is_unique  # more rounds than the first 4 per task
    assert score(args) == 0
    assert f"{len(scores)} of 32 prompt(s) in 2 task(s)" in first
    assert " 0 generated" in capsys.readouterr().out


def api_servers() -> set[int]:
    """Live vLLM API server processes on this machine."""
    found = set()
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and b"vllm.entrypoints.openai.api_server" in (d / "cmdline").read_bytes() \
                    and live_group(int(d.name)):
                found.add(int(d.name))
        except OSError:
            pass
    return found


@pytest.mark.slow
@pytest.mark.vllm
def test_a_killed_vllm_run_resumes_under_ray_and_leaves_no_server(vllm_python, tmp_path):
    """SIGKILL of `taskdiv score --engine vllm` (its own server) mid-run: its server's process
    group (API server, engine, worker) is gone within seconds (the watchdog). The rerun, with
    `--engine ray --runner vllm` (an actor with a vLLM server of its own; the same "vllm" rows
    of the cache), reuses every stored row, scores the rest once, and leaves no server."""
    out = tmp_path / "s"
    common = [POOL, "--model", MODEL, "--dtype", "float32", "--max-new-tokens", "24", "--out", out]
    env = {**os.environ, "TASKDIV_NO_PROGRESS": "1", "TASKDIV_VLLM_PYTHON": vllm_python}
    before = api_servers()
    run = subprocess.Popen([sys.executable, "-m", "taskdiv.cli", "score", *map(str, common), "--engine", "vllm",
                            "--batch-size", "1", "--concurrency", "1"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Only a bound for a hung run: on a quiet machine the third row is stored about a minute after
    # the server is ready; beside other jobs and close to the memory limit the server alone took
    # 224 s to start and 400 s ran out before the third row.
    deadline = time.time() + 900
    while stored(out) < 3 and run.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    run.send_signal(signal.SIGKILL)
    run.wait()
    at_kill = stored(out)
    err = run.stderr.read()
    assert 3 <= at_kill < 24, err[-2000:]
    server_pid = int(re.search(r"vLLM server pid (\d+)", err)[1])
    assert wait_gone(server_pid, 60) == []
    rerun = subprocess.run([sys.executable, "-m", "taskdiv.cli", "score", *map(str, common), "--engine", "ray",
                            "--runner", "vllm", "--workers", "1"], env=env, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    m = re.search(r"(\d+) reused from the cache, (\d+) generated", rerun.stdout)
    assert int(m[1]) >= at_kill and int(m[1]) + int(m[2]) == 24, rerun.stdout
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 32 and scores["id"].is_unique
    assert stored(out) == 24  # no row twice, none lost
    end = time.time() + 60
    while api_servers() - before and time.time() < end:
        time.sleep(0.5)
    assert api_servers() - before == set()  # the actor's server went with it


@pytest.mark.slow
@pytest.mark.vllm
def test_evaluate_heldout_with_vllm_agrees_with_local(vllm_server, tmp_path):
    """evaluate --engine vllm: generative items (bigbench_simple_arithmetic) generated and
    multiple-choice items (sports_understanding) scored on the server give the local engine's
    predictions; choice scores within 1e-3 (measured: 2e-5, the 5-decimal rounding)."""
    heldout = "bench:bbh/sports_understanding,gauntlet/bigbench_simple_arithmetic?split=test"
    common = ["evaluate", MODEL, "--heldout", heldout, "--limit", "12", "--dtype", "float32"]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--engine", "vllm", "--vllm-url", vllm_server.url, "--out", str(tmp_path / "vllm")]) == 0
    a = pd.read_json(tmp_path / "local" / "items.jsonl", lines=True).set_index("id")
    b = pd.read_json(tmp_path / "vllm" / "items.jsonl", lines=True).set_index("id").loc[a.index]
    assert set(a["kind"]) == {"mc", "generative"}
    assert (a["prediction"] == b["prediction"]).all()
    mc = a["kind"] == "mc"
    assert np.abs(np.stack(a["scores"][mc]) - np.stack(b["scores"][mc])).max() < 1e-3


# ----------------------------------------------------------------------------- without vLLM


def test_a_missing_vllm_is_one_line_with_the_install_hint(tmp_path, small_pool, monkeypatch, capsys):
    from taskdiv.engines import vllm_server

    monkeypatch.delenv("TASKDIV_VLLM_PYTHON", raising=False)
    monkeypatch.setattr(vllm_server, "default_venv_python", lambda: tmp_path / "none" / "bin" / "python")
    monkeypatch.setattr(vllm_server, "has_vllm", lambda python: False)
    with pytest.raises(TaskdivError, match=r"vLLM is not installed; make vllm .* --vllm-url"):
        vllm_server.vllm_python()
    monkeypatch.undo()
    assert score([small_pool, "--model", MODEL, "--engine", "vllm", "--vllm-python", sys.executable,
                  "--out", tmp_path / "s"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no vLLM there; install it: make vllm" in err, err


def test_evaluate_engine_options_are_checked(tmp_path, capsys):
    assert main(["evaluate", MODEL, "--suite", "mmlu", "--engine", "vllm", "--out", str(tmp_path / "e")]) == 1
    assert "--engine vllm evaluates the heldout and judge suites" in capsys.readouterr().err
    assert main(["evaluate", MODEL, "--vllm-url", "http://127.0.0.1:1", "--out", str(tmp_path / "e")]) == 1
    assert "--vllm-url apply to --engine vllm only" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--engine", "vllm", "--metric", "mean_entropy"], "mean_entropy needs the whole next-token distribution"),
    (["--runner", "vllm"], "--runner applies to --engine ray only"),
    (["--vllm-url", "http://127.0.0.1:1"], "--vllm-url apply to --engine vllm"),
    (["--engine", "vllm", "--workers", "2"], "--workers apply to --engine ray only"),
    (["--engine", "vllm", "--concurrency", "0"], "--concurrency must be at least 1"),
    (["--engine", "vllm", "--vllm-model", "x"], "--vllm-model names a model of --vllm-url"),
])
def test_vllm_options_are_checked_before_any_work(small_pool, tmp_path, capsys, argv, message):
    assert score([small_pool, "--out", tmp_path / "s", *argv]) == 1
    assert message in capsys.readouterr().err


def test_a_vllm_url_where_nothing_listens(small_pool, tmp_path, capsys):
    from taskdiv.engines.vllm_server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert score([small_pool, "--model", MODEL, "--engine", "vllm", "--vllm-url", url, "--out", tmp_path / "s"]) == 1
    assert f"{url}/v1/models: no OpenAI-compatible server answers" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the server helper

FAKE = textwrap.dedent('''\
    #!{python}
    """Stands in for a vLLM venv's python: `-c` (the find_spec probe) succeeds; `-m ...` serves
    /health and /v1/models after FAKE_DELAY seconds, with a child in its group as vLLM's
    engine process; FAKE_MODE=crash exits at once with an import error."""
    import http.server, json, os, sys, time
    args = sys.argv[1:]
    if args[0] == "-c":
        sys.exit(0)
    if os.environ.get("FAKE_MODE") == "crash":
        print("ImportError: libc10_cuda.so: cannot open shared object file: No such file or directory")
        sys.exit(1)
    port, name = int(args[args.index("--port") + 1]), args[args.index("--served-model-name") + 1]
    if os.fork() == 0:  # the "engine process"
        time.sleep(3600)
        sys.exit(0)
    time.sleep(float(os.environ.get("FAKE_DELAY", "0")))

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({{"data": [{{"id": name, "owned_by": "vllm", "max_model_len": 64}}]}}).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
''')


@pytest.fixture
def fake_python(tmp_path) -> Path:
    path = tmp_path / "fake-venv" / "bin" / "python"
    path.parent.mkdir(parents=True)
    path.write_text(FAKE.format(python=sys.executable))
    path.chmod(0o755)
    return path


def test_server_helper_starts_serves_and_stops_its_group(fake_python, tmp_path):
    from taskdiv.engines.vllm_server import OpenAIClient, VLLMServer

    with VLLMServer(tmp_path / "m", python=str(fake_python), log_path=tmp_path / "log") as server:
        pgid = server.proc.pid
        assert len(live_group(pgid)) == 2  # the server and its "engine"
        assert OpenAIClient(server.url).models()[0]["id"] == "m"
    assert wait_gone(pgid, 5) == []


def test_server_helper_time_out_and_early_exit_are_clear(fake_python, tmp_path, monkeypatch):
    from taskdiv.engines.vllm_server import VLLMServer

    monkeypatch.setenv("FAKE_DELAY", "60")
    server = VLLMServer(tmp_path / "m", python=str(fake_python), timeout=2, log_path=tmp_path / "log")
    with pytest.raises(TaskdivError, match=r"was not ready within 2 s \(log: .*log\)"):
        server.start()
    monkeypatch.setenv("FAKE_MODE", "crash")
    with pytest.raises(TaskdivError, match=r"exited with status 1 before it was ready: ImportError: libc10_cuda.so.*"
                                           r"pip uninstall them there"):
        VLLMServer(tmp_path / "m", python=str(fake_python), log_path=tmp_path / "log2").start()


@pytest.mark.parametrize("how", ["sigkill", "ctrl-c"])
def test_no_server_outlives_its_owner(fake_python, tmp_path, how):
    """The owner killed (SIGKILL: the watchdog stops the group) or interrupted (Ctrl-C: the
    `with` block stops it, and the owner exits)."""
    # SIGINT's default handler is set in the owner itself: a process started from a shell's
    # background job (as CI may run make) inherits SIGINT ignored, and Ctrl-C would not reach it.
    script = textwrap.dedent(f"""
        import signal, time
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from taskdiv.engines.vllm_server import VLLMServer
        with VLLMServer({str(tmp_path / 'm')!r}, python={str(fake_python)!r}) as server:
            print(server.proc.pid, flush=True)
            time.sleep(3600)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pgid = int(owner.stdout.readline())
    assert live_group(pgid)
    owner.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGINT)
    owner.wait(timeout=30)
    assert wait_gone(pgid, 30) == []
