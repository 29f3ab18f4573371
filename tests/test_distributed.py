"""`taskdiv score --engine ray` on a real local Ray cluster (no mocks).

One local cluster (2 CPUs, small object store, no dashboard) serves the whole module;
the driver-kill and bad-address tests run the CLI in a subprocess (the first joins this
cluster by its address). The real SmolLM2-135M-Instruct scores real BBH prompts
where results are compared; the tiny random model serves where only the plumbing counts.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_jsonl

from taskdiv import cli

pytest.importorskip("ray")

# 40 distinct prompts (the tests count prompts by their hash; bigbench_simple_arithmetic repeats some).
BB_POOL = "bench:bbh/sports_understanding,bbh/multistep_arithmetic_two,bbh/formal_fallacies,bbh/ruin_names?max_pool=10"
SMOL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
             configure_logging=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def pool40(tmp_path_factory) -> Path:
    """40 real BBH prompts (../shared/data), 10 in each of 4 tasks, as a JSONL pool."""
    from taskdiv.pool import load as data

    frame = data.load_pool(BB_POOL).frame
    assert len(frame) == 40
    path = tmp_path_factory.mktemp("pool") / "pool40.jsonl"
    return write_jsonl(path, frame[["id", "prompt", "task"]].to_dict(orient="records"))


def score(args) -> int:
    return cli.main(["score", *map(str, args), "--no-progress"])


def shards(out: Path) -> list[Path]:
    return sorted((out / "shards").glob("*.parquet"))


def test_score_help_lists_the_engine_flags(capsys):
    with pytest.raises(SystemExit):
        cli.main(["score", "--help"])
    text = capsys.readouterr().out
    for flag in ("--engine", "--ray-address", "--workers", "--gpus-per-worker", "--cpus-per-worker",
                 "--batches-per-shard", "--shards"):
        assert flag in text


def test_a_shard_write_removes_what_a_killed_worker_left_of_it(tmp_path):
    """A worker killed while writing a shard leaves its temporary beside the shards; on a local
    file system the next write of that shard removes it (held temporaries: common.atomic),
    and other files stay. The shard reads back as written."""
    from pyarrow import fs

    from taskdiv.engines.local import Generation
    from taskdiv.engines.ray import read_shard, write_shard

    name = "key-0123456789abcdef01234567.parquet"
    stale = [f".{name}.{'f' * 32}.tmp", f".{name}.k3x_9q2a.tmp"]  # the older writer's naming and atomic's
    others = [f".other-{name}.abcdefgh.tmp", "key-fedcba.parquet"]
    for leftover in stale + others:
        (tmp_path / leftover).write_bytes(b"left over")
    rows = [(f"sha{i}", Generation([1, 2, i], np.array([-0.5, -0.25, -1.0], np.float32),
                                    np.array([0.1, 0.2, 0.3], np.float32)), f"text {i}", 7 + i, i == 1)
            for i in range(3)]
    write_shard(fs.LocalFileSystem(), str(tmp_path), name, rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, *others])
    back = read_shard(fs.LocalFileSystem(), str(tmp_path), name)
    assert [(r[0], r[1].token_ids, r[2], r[3], r[4]) for r in back] == \
        [(r[0], r[1].token_ids, r[2], r[3], r[4]) for r in rows]
    np.testing.assert_array_equal(back[2][1].logprobs, rows[2][1].logprobs)

@pytest.mark.slow
def test_ray_engine_gives_the_local_engine_results(cluster, pool40, tmp_path):
    """Same confidence prompt by prompt (1e-5, float32), same tasks.csv, same output files."""
    common = [pool40, "--model", SMOL, "--dtype", "float32", "--max-new-tokens", "4", "--batch-size", "8"]
    assert score([*common, "--out", tmp_path / "local"]) == 0
    assert score([*common, "--engine", "ray", "--workers", "2", "--batches-per-shard", "1",
                  "--out", tmp_path / "ray"]) == 0
    for name in ("scores.csv", "scores.parquet", "tasks.csv", "config.yaml"):
        assert (tmp_path / "ray" / name).exists()
    local = pd.read_parquet(tmp_path / "local" / "scores.parquet").set_index("id")
    ray_ = pd.read_parquet(tmp_path / "ray" / "scores.parquet").set_index("id")
    assert list(local.columns) == list(ray_.columns) and len(ray_) == 40
    assert ray_.index.tolist() == local.index.tolist()
    np.testing.assert_allclose(ray_["confidence"], local["confidence"], atol=1e-5, rtol=0)
    assert (ray_["generated"] == local["generated"]).all() and (ray_["tokens"] == local["tokens"]).all()
    t_local, t_ray = (pd.read_csv(tmp_path / d / "tasks.csv") for d in ("local", "ray"))
    pd.testing.assert_frame_equal(t_ray, t_local, atol=1e-5, rtol=0)
    assert len(shards(tmp_path / "ray")) == 5  # 40 prompts / (1 batch of 8)


def test_per_task_and_target_ci_on_ray(cluster, tiny_model_dir, tmp_path, capsys):
    """--per-task and --target-ci run their rounds on the cluster, as locally."""
    rows = [{"id": f"{t}{i}", "prompt": f"Question {i} of task {t}: what is {i} + {len(t)}?", "task": t}
            for t in ("a", "bb", "ccc") for i in range(30)]
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    common = [pool, "--model", tiny_model_dir, "--max-new-tokens", "3", "--batch-size", "4", "--per-task", "1",
              "--target-ci", "0.5", "--dtype", "float32"]
    assert score([*common, "--out", tmp_path / "local"]) == 0
    assert score([*common, "--engine", "ray", "--workers", "2", "--out", tmp_path / "ray"]) == 0
    local, ray_ = (pd.read_csv(tmp_path / d / "scores.csv").set_index("id") for d in ("local", "ray"))
    assert sorted(ray_.index) == sorted(local.index) and len(ray_) == 27  # 1 per task, then 8 more:
    # one scored prompt gives no interval, which counts as too wide
    np.testing.assert_allclose(ray_.loc[local.index, "confidence"], local["confidence"], atol=1e-5, rtol=0)
    # The engines share OUT/cache.sqlite: the Ray engine sends nothing the local one cached.
    capsys.readouterr()
    assert score([*common, "--engine", "ray", "--out", tmp_path / "local"]) == 0
    assert "27 reused from the cache, 0 generated" in capsys.readouterr().out


def _actor_pids() -> list[int]:
    import psutil

    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if "ShardScorer" in " ".join(p.info["cmdline"] or []):
                pids.append(p.info["pid"])
        except psutil.Error:
            continue
    return pids


@pytest.mark.slow
def test_a_killed_actor_is_restarted_and_nothing_is_lost_or_doubled(cluster, pool40, tmp_path):
    out = tmp_path / "s"
    killed = []

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            pids = _actor_pids()
            if shards(out) and len(pids) >= 2:  # mid-run: a shard done, both actors alive
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    assert score([pool40, "--model", SMOL, "--dtype", "float32", "--max-new-tokens", "4", "--batch-size", "2",
                  "--batches-per-shard", "1", "--engine", "ray", "--workers", "2", "--out", out]) == 0
    thread.join()
    assert killed, "no actor was killed mid-run"
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 40 and scores["id"].is_unique
    with sqlite3.connect(out / "cache.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT prompt_sha) FROM scores").fetchone() == (40, 40)
    files = shards(out)
    assert len(files) == 20
    in_shards = pd.concat([pd.read_parquet(f, columns=["prompt_sha"]) for f in files])["prompt_sha"]
    assert len(in_shards) == 40 and in_shards.is_unique


@pytest.mark.slow
def test_a_killed_driver_leaves_shards_the_rerun_reuses(cluster, pool40, tmp_path, caplog, capsys):
    out = tmp_path / "s"
    args = [pool40, "--model", SMOL, "--dtype", "float32", "--max-new-tokens", "4", "--batch-size", "2",
            "--batches-per-shard", "1", "--engine", "ray", "--workers", "2", "--out", out]
    env = {**os.environ, "TASKDIV_NO_PROGRESS": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "taskdiv.cli", "score", *map(str, args),
                               "--ray-address", cluster], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while len(shards(out)) < 2 and driver.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    done_at_kill = len(shards(out))
    assert 2 <= done_at_kill < 20, driver.stderr.read().decode()[-2000:]
    import logging

    with caplog.at_level(logging.INFO, logger="taskdiv.engines.ray"):
        assert score(args) == 0  # the rerun, in this process, on the same cluster
    m = re.search(r"reused (\d+) finished shard\(s\) \((\d+) prompts\)", caplog.text)
    assert m, caplog.text[-2000:]
    reused_shards, reused_prompts = int(m[1]), int(m[2])
    assert reused_shards >= done_at_kill and reused_prompts == 2 * reused_shards
    assert f"{reused_prompts} reused from the cache, {40 - reused_prompts} generated" in capsys.readouterr().out
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 40 and scores["id"].is_unique


def test_shards_on_an_object_store(cluster, small_pool, tiny_model_dir, tmp_path, caplog, capsys, monkeypatch):
    """--shards s3://...: the actors write their shards to an S3 API (moto's server, on this
    machine) through pyarrow's filesystem layer; the scores equal the local engine's, no
    temporary object is left (one a killed worker left goes once it is old), a run into a new
    OUT (another machine's view) reuses every shard from the store, and the secret in the URI
    is in no log line or config.yaml."""
    import logging

    from pyarrow import fs

    from taskdiv.engines import ray as ray_engine

    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
        s3 = fs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", region="us-east-1",
                             access_key="testkey", secret_key="s3cr3t", allow_bucket_creation=True)
        s3.create_dir("runs")
        uri = f"s3://testkey:s3cr3t@runs/score/shards?{endpoint}"
        common = [small_pool, "--model", tiny_model_dir, "--dtype", "float32", "--max-new-tokens", "3",
                  "--batch-size", "2", "--batches-per-shard", "1"]
        assert score([*common, "--out", tmp_path / "local"]) == 0
        with caplog.at_level(logging.INFO, logger="taskdiv.engines.ray"):
            assert score([*common, "--engine", "ray", "--workers", "2", "--shards", uri, "--out", tmp_path / "a"]) == 0
            stored = [i.base_name for i in s3.get_file_info(fs.FileSelector("runs/score/shards"))]
            assert len(stored) == 8 and all(n.endswith(".parquet") and not n.startswith(".") for n in stored)
            local, on_s3 = (pd.read_csv(tmp_path / d / "scores.csv").set_index("id") for d in ("local", "a"))
            np.testing.assert_allclose(on_s3.loc[local.index, "confidence"], local["confidence"], atol=1e-5, rtol=0)
            # A worker killed between its upload and the move left a temporary: kept while it
            # could still be in flight (young), removed by the next driver once it is old.
            key = stored[0].rsplit("-", 1)[0]
            stale = f"runs/score/shards/.{key}-{'0' * 24}.parquet.{'f' * 32}.tmp"
            with s3.open_output_stream(stale) as f:
                f.write(b"half a shard")
            assert score([*common, "--engine", "ray", "--workers", "2", "--shards", uri, "--out", tmp_path / "b"]) == 0
            assert s3.get_file_info(stale).type == fs.FileType.File
            monkeypatch.setattr(ray_engine, "STALE_TEMP_SECONDS", 0)
            assert score([*common, "--shards", uri, "--engine", "ray", "--workers", "1", "--out", tmp_path / "c"]) == 0
            assert s3.get_file_info(stale).type == fs.FileType.NotFound
            assert "removed 1 temporary shard file(s) that killed workers left in s3://testkey:***@" in caplog.text
        assert "reused 8 finished shard(s) (16 prompts) from s3://testkey:***@runs/score/shards" in caplog.text
        assert "16 reused from the cache, 0 generated" in capsys.readouterr().out
        written = (tmp_path / "b" / "config.yaml").read_text()
        assert "s3cr3t" not in caplog.text + written and "testkey:***@runs" in written
    finally:
        server.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_ray_address_fails_fast(small_pool, tiny_model_dir, tmp_path):
    # Bounded by the timeout (a hang fails); how fast it fails is bench/bench_ray.py's to measure.
    run = subprocess.run([sys.executable, "-m", "taskdiv.cli", "score", str(small_pool), "--model", str(tiny_model_dir),
                          "--engine", "ray", "--ray-address", f"127.0.0.1:{_free_port()}", "--out", str(tmp_path / "s"),
                          "--no-progress"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "--ray-address 127.0.0.1:" in run.stderr and "no Ray cluster answers" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("address, message", [
    # Ray Data's executor fails over Ray Client ("'Worker' object has no attribute 'core_worker'",
    # Ray 2.60, checked against a head with a client server): refused up front, with the way that works.
    ("ray://127.0.0.1:10001", "Ray Client (ray://) cannot run Ray Data, which the Ray engine uses; run taskdiv on "
                              "a machine of the cluster with --ray-address HEAD:6379"),
    ("http://127.0.0.1:8265", "expected HOST:PORT or auto"),  # the dashboard's address, not the cluster's
    ("head-node", "expected HOST:PORT or auto"),
])
def test_a_ray_address_taskdiv_cannot_use_is_refused_before_connecting(address, message):
    from taskdiv.common.errors import TaskdivError
    from taskdiv.engines.ray import _probe

    with pytest.raises(TaskdivError, match=re.escape(message)):
        _probe(address)


@pytest.mark.parametrize("flags, message", [
    (["--engine", "ray", "--gpus-per-worker", "1"], "--gpus-per-worker 1: the Ray cluster has no GPUs"),
    (["--engine", "ray", "--workers", "0"], "--workers must be at least 1, got 0"),
    (["--engine", "ray", "--workers", "3"], "--workers 3: the Ray cluster has room for 2 worker(s)"),
    (["--workers", "2"], "--workers apply to --engine ray only"),
])
def test_bad_engine_options_fail_with_a_clear_error(cluster, small_pool, tiny_model_dir, tmp_path, capsys,
                                                    flags, message):
    assert score([small_pool, "--model", tiny_model_dir, *flags, "--out", tmp_path / "s"]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_embeddings_on_ray_match_local_and_are_cached(cluster, tmp_path):
    from taskdiv.selection import embeddings

    prompts = [f"Question {i}: what is the capital of country number {i}?" for i in range(40)]
    local = embeddings.embed(prompts, cache=tmp_path / "local.sqlite", progress=False)
    ray_ = embeddings.embed(prompts, cache=tmp_path / "ray.sqlite", progress=False, engine="ray")
    assert ray_.shape == local.shape == (40, 384)
    np.testing.assert_allclose(ray_, local, atol=1e-5)
    with sqlite3.connect(tmp_path / "ray.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM vectors").fetchone() == (40,)
    # Cached: a second call needs no cluster work and gives the same vectors.
    again = embeddings.embed(prompts, cache=tmp_path / "ray.sqlite", progress=False, engine="ray")
    np.testing.assert_array_equal(again, ray_)


def test_an_actor_that_cannot_start_is_reported_with_its_node_and_cause(cluster, tmp_path):
    """An Embedder whose model does not load: the error names the node and the cause.
    Before, the actor's constructor raised, and the driver said only 'the Ray engine
    failed: ActorDiedError: The actor died because of an error raised in its creation
    task', after Ray Data's stack trace asking for a Ray bug report."""
    from taskdiv.common.errors import TaskdivError
    from taskdiv.engines.ray import embed_batches

    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(TaskdivError) as e:
        list(embed_batches({"k": "some text"}, str(tmp_path / "not-a-model"), batch_size=4))
    assert str(e.value).startswith("a Ray worker on node "), str(e.value)
    assert " could not start: " in str(e.value) and "not-a-model" in str(e.value), str(e.value)


def test_a_worker_error_is_reported_by_its_own_type_and_message(cluster):
    """Ray Data wraps a worker's exception as 'UserCodeException: UDF failed to process a
    data block'; the error the driver reports is the worker's own."""
    import ray

    from taskdiv.engines.ray import _driver_error

    def fails(batch):
        raise ValueError("the batch had no prompts")

    with pytest.raises(Exception) as e:
        ray.data.from_items([{"x": 1}]).map_batches(fails, batch_size=1).take_all()
    assert "UDF failed to process a data block" in str(e.value)  # what the driver is given
    assert str(_driver_error(e.value)) == "the Ray engine failed: ValueError: the batch had no prompts"
