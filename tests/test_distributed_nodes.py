"""`taskdiv score --engine ray` on a Ray cluster of two nodes (no mocks).

`ray.cluster_utils.Cluster` starts a head node and a worker node on this machine, each
with its own raylet and object store, as `ray start --head` and `ray start --address`
do on two machines; the CLI joins it by its address in a subprocess, as a user's driver
would. The last test starts its second node in a mount namespace of its own, which
gives that node a disk of its own, as another machine has. A module of its own:
test_distributed.py's in-process cluster is shut down by then, and this one cannot
disturb it.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from taskdiv import cli

pytest.importorskip("ray")

STORE = 80 * 1024 * 1024


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "object_store_memory": STORE})
    cluster.add_node(num_cpus=1, object_store_memory=STORE)
    cluster.wait_for_nodes()
    yield cluster.address
    cluster.shutdown()


def driver(args, address: str | None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "TASKDIV_NO_PROGRESS": "1"}
    env.pop("RAY_ADDRESS", None)
    where = ["--ray-address", address] if address else []
    return subprocess.run([sys.executable, "-m", "taskdiv.cli", "score", *map(str, args), "--engine", "ray", *where],
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_two_nodes_score_as_one_machine(two_nodes, small_pool, tiny_model_dir, tmp_path, capsys):
    """One actor on each node (1 CPU each); the scores equal the local engine's."""
    common = [small_pool, "--model", tiny_model_dir, "--dtype", "float32", "--max-new-tokens", "3",
              "--batch-size", "2"]
    assert cli.main(["score", *map(str, common), "--out", str(tmp_path / "local"), "--no-progress"]) == 0
    run = driver([*common, "--workers", "2", "--batches-per-shard", "1", "--out", tmp_path / "ray"], two_nodes)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "on 2 Ray node(s)" in run.stderr, run.stderr[-3000:]
    assert f"--shards {tmp_path / 'ray' / 'shards'}: reached from 2 node(s)" in run.stderr
    assert "8 shard(s) went through 2 actor process(es)" in run.stderr
    local, ray_ = (pd.read_parquet(tmp_path / d / "scores.parquet").set_index("id") for d in ("local", "ray"))
    assert ray_.index.tolist() == local.index.tolist() and len(ray_) == 16
    np.testing.assert_allclose(ray_["confidence"], local["confidence"], atol=1e-5, rtol=0)
    pd.testing.assert_frame_equal(*(pd.read_csv(tmp_path / d / "tasks.csv") for d in ("ray", "local")),
                                  atol=1e-5, rtol=0)


def test_a_worker_larger_than_every_node_is_refused(two_nodes, small_pool, tiny_model_dir, tmp_path):
    """The cluster has 2 CPUs, but no node has 2: an actor of 2 CPUs would never start,
    and Ray Data would wait for it for ever."""
    start = time.time()
    run = driver([small_pool, "--model", tiny_model_dir, "--cpus-per-worker", "2", "--out", tmp_path / "s"],
                 two_nodes, timeout=60)
    assert run.returncode == 1 and time.time() - start < 60
    assert ("--cpus-per-worker 2 --gpus-per-worker 0: no node of the Ray cluster has room for one worker of "
            "2 CPU(s) and 0 GPU(s) (an actor runs on one node; its 2 node(s) have 1 CPUs, 0 GPUs; 1 CPUs, "
            "0 GPUs)") in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "s" / "scores.csv").exists()


def test_without_an_address_a_cluster_left_by_ray_start_is_not_joined(two_nodes, small_pool, tiny_model_dir,
                                                                       tmp_path):
    """`ray start` (here the two-node cluster) leaves its address where a bare ray.init()
    would join it, and then refuse num_cpus. Without --ray-address taskdiv starts its own
    local cluster, as --help says."""
    run = driver([small_pool, "--model", tiny_model_dir, "--max-new-tokens", "2", "--out", tmp_path / "s"], None)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "started a local Ray cluster" in run.stderr and "on 1 Ray node(s)" in run.stderr
    assert len(pd.read_csv(tmp_path / "s" / "scores.csv")) == 16


def _in_namespace(pid: int) -> list[int]:
    """The processes that share the mount namespace of process `pid` (a node's raylet and
    workers, wherever they re-parented to)."""
    try:
        ns = os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.readlink(f"/proc/{entry}/ns/mnt") == ns:
                found.append(int(entry))
        except OSError:
            pass
    return found


@pytest.fixture
def split_disk(tmp_path):
    """A head node and a second node that sees its own empty disk at tmp_path/out: the
    second node runs in a mount namespace of its own with a tmpfs mounted there, as
    another machine has its own disk at every local path. Skipped where mount namespaces
    are not allowed."""
    from ray.cluster_utils import Cluster

    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("needs a mount namespace (unshare -m) for a node with a disk of its own")
    hidden = tmp_path / "out"
    hidden.mkdir()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "object_store_memory": STORE})
    ray_cli = Path(sys.executable).parent / "ray"
    script = ('mount -t tmpfs tmpfs "$0" && '
              'exec "$1" start --address "$2" --num-cpus 1 --object-store-memory "$3" --block')
    node = subprocess.Popen(["unshare", "-m", "sh", "-c", script, hidden, ray_cli, cluster.address, str(STORE)],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "node.log", "w"), start_new_session=True)
    try:
        deadline = time.time() + 60
        while len(cluster.global_state._live_node_ids()) < 2:
            assert node.poll() is None and time.time() < deadline, (tmp_path / "node.log").read_text()[-2000:]
            time.sleep(0.5)
        yield cluster.address, hidden
    finally:
        for pid in _in_namespace(node.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        node.wait()
        cluster.shutdown()


def test_shards_a_node_cannot_reach_are_refused_before_any_work(split_disk, small_pool, tiny_model_dir, tmp_path):
    """The default --shards, OUT/shards, is on the driver's disk; the second node has its
    own disk there. Before the reach check, the run failed only when that node's first
    shard came back; now it fails before any model is loaded, naming the node."""
    address, out = split_disk
    start = time.time()
    run = driver([small_pool, "--model", tiny_model_dir, "--max-new-tokens", "2", "--workers", "2",
                  "--out", out], address, timeout=120)
    assert run.returncode == 1, run.stderr[-3000:]
    assert time.time() - start < 60
    assert f"--shards {out / 'shards'}: node " in run.stderr
    assert "wrote a probe file there that this driver does not see" in run.stderr
    assert run.stderr.count("wrote a probe file") == 1, run.stderr[-2000:]  # the head node shares the disk
    assert "Traceback" not in run.stderr and "scoring 16 prompt(s)" not in run.stderr
    assert not (out / "scores.csv").exists()
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".reach-")]  # the head's probe is gone
