"""`taskdiv score --engine ray` on a Ray cluster of two nodes (no mocks).

`ray.cluster_utils.Cluster` starts a head node of 1 CPU on this machine and `ray start
--address` a worker node of 2 CPUs, each with its own raylet and object store, as on
two machines; the CLI
joins the cluster by its address in a subprocess, as a user's driver would. The worker
node runs in a mount namespace of its own (`unshare -m`) with an empty tmpfs mounted
over one directory, OWN: there it sees a disk of its own, as another machine sees its
own disk at every local path, while the rest (the model, a shared --shards directory)
stays common, as shared storage is. Where mount namespaces are not allowed the worker
node shares the disk, and the test that needs a disk of its own is skipped.

A module of its own: test_distributed.py's in-process cluster is shut down by then, and
this one cannot disturb it.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from taskdiv import cli

pytest.importorskip("ray")

STORE = 80 * 1024 * 1024


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


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """address: the head's; own: the directory the worker node sees as its own empty disk
    (None where mount namespaces are not allowed)."""
    from ray.cluster_utils import Cluster

    own = tmp_path_factory.mktemp("own-disk")
    log = tmp_path_factory.mktemp("node-log") / "node.log"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "object_store_memory": STORE})
    node = None
    mountable = shutil.which("unshare") and not subprocess.run(  # a mount namespace, and a tmpfs mounted in it
        ["unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs "$0"', own], capture_output=True).returncode
    if mountable:
        script = ('mount -t tmpfs tmpfs "$0" && '
                  'exec "$1" start --address "$2" --num-cpus 2 --object-store-memory "$3" --block')
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        with open(log, "w") as err:  # the child keeps its own copy of the descriptor
            node = subprocess.Popen(["unshare", "-m", "sh", "-c", script, own, ray_cli, cluster.address, str(STORE)],
                                    stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    else:
        cluster.add_node(num_cpus=2, object_store_memory=STORE)
        own = None
    try:
        deadline = time.time() + 60
        while len(cluster.global_state._live_node_ids()) < 2:
            assert (node is None or node.poll() is None) and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        yield SimpleNamespace(address=cluster.address, own=own, log=log)
    finally:
        if node is not None:
            for pid in _in_namespace(node.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            node.wait()
        cluster.shutdown()


def driver(args, address: str | None, timeout: float = 180, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TASKDIV_NO_PROGRESS": "1"}
    env.pop("RAY_ADDRESS", None)
    where = ["--ray-address", address] if address else []
    return subprocess.run([sys.executable, "-m", "taskdiv.cli", "score", *map(str, args), "--engine", "ray", *where],
                          env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_a_node_with_a_disk_of_its_own_scores_into_shared_shards(two_nodes, small_pool, tiny_model_dir, tmp_path):
    """Only the worker node has room for an actor of 2 CPUs, so it scores every shard;
    OUT is on its own disk where it has one, and only --shards is shared, as on two
    machines with shared storage. The driver reads what it wrote; the scores equal the
    local engine's."""
    options = ["--dtype", "float32", "--max-new-tokens", "3", "--batch-size", "2"]
    assert cli.main(["score", str(small_pool), "--model", str(tiny_model_dir), *options, "--out",
                     str(tmp_path / "local"), "--no-progress"]) == 0
    out, shards = (two_nodes.own or tmp_path) / "ray", tmp_path / "shared"
    # --shards and --model relative to the driver's working directory, which the worker node's is not.
    model = os.path.relpath(tiny_model_dir, tmp_path)
    run = driver([small_pool, "--model", model, *options, "--cpus-per-worker", "2", "--batches-per-shard", "1",
                  "--shards", "shared", "--out", out], two_nodes.address, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"--shards {shards}: reached from 1 node(s)" in run.stderr, run.stderr[-3000:]
    assert "8 shard(s) went through 1 actor process(es) on 1 Ray node(s)" in run.stderr
    assert "Progress bars disabled" not in run.stderr  # Ray Data's notice: taskdiv shows its own bar
    assert len(list(shards.glob("*.parquet"))) == 8 and not list(shards.glob(".*"))
    local, ray_ = (pd.read_parquet(d / "scores.parquet").set_index("id") for d in (tmp_path / "local", out))
    assert ray_.index.tolist() == local.index.tolist() and len(ray_) == 16
    np.testing.assert_allclose(ray_["confidence"], local["confidence"], atol=1e-5, rtol=0)
    pd.testing.assert_frame_equal(*(pd.read_csv(d / "tasks.csv") for d in (out, tmp_path / "local")),
                                  atol=1e-5, rtol=0)


def test_a_worker_larger_than_every_node_is_refused(two_nodes, small_pool, tiny_model_dir, tmp_path):
    """The cluster has 3 CPUs, but no node has 3: an actor of 3 CPUs would never start,
    and Ray Data would wait for it for ever."""
    start = time.time()
    run = driver([small_pool, "--model", tiny_model_dir, "--cpus-per-worker", "3", "--out", tmp_path / "s"],
                 two_nodes.address, timeout=60)
    assert run.returncode == 1 and time.time() - start < 60
    assert ("--cpus-per-worker 3 --gpus-per-worker 0: no node of the Ray cluster has room for one worker of "
            "3 CPU(s) and 0 GPU(s) (an actor runs on one node; its 2 node(s) have ") in run.stderr, run.stderr[-2000:]
    assert "1 CPUs, 0 GPUs" in run.stderr and "2 CPUs, 0 GPUs" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "s" / "scores.csv").exists()


def test_without_an_address_a_cluster_left_by_ray_start_is_not_joined(two_nodes, small_pool, tiny_model_dir,
                                                                       tmp_path):
    """`ray start` (here the two-node cluster) leaves its address where a bare ray.init()
    would join it, and then refuse num_cpus. Without --ray-address taskdiv starts its own
    local cluster, as --help says. One worker more than this machine has cores stops the
    run right after it connects, and the message tells which cluster it joined: the new
    local one (1 node, this machine's cores), not the two-node one."""
    cores = os.cpu_count()
    run = driver([small_pool, "--model", tiny_model_dir, "--workers", cores + 1, "--out", tmp_path / "s"], None)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "started a local Ray cluster" in run.stderr, run.stderr[-3000:]
    assert (f"--workers {cores + 1}: the Ray cluster has room for {cores} worker(s) of 1 CPU(s) and 0 GPU(s) "
            f"(it has {cores} CPUs, 0 GPUs on 1 node(s)") in run.stderr, run.stderr[-3000:]
    assert "Traceback" not in run.stderr


def test_shards_a_node_cannot_reach_are_refused_before_any_work(two_nodes, small_pool, tiny_model_dir):
    """The default --shards, OUT/shards, is on the driver's disk; the worker node has its
    own disk there. Before the reach check, the run failed only when that node's first
    shard came back; now it fails before any model is loaded, naming the node."""
    if two_nodes.own is None:
        pytest.skip("needs a node with a disk of its own (mount namespaces, unshare -m)")
    out = two_nodes.own / "default"
    start = time.time()
    run = driver([small_pool, "--model", tiny_model_dir, "--max-new-tokens", "2", "--workers", "2",
                  "--out", out], two_nodes.address, timeout=120)
    assert run.returncode == 1, run.stderr[-3000:]
    assert time.time() - start < 60
    assert f"--shards {out / 'shards'}: node " in run.stderr
    assert "wrote a probe file there that this driver does not see" in run.stderr
    assert run.stderr.count("wrote a probe file") == 1, run.stderr[-2000:]  # the head node shares the disk
    assert "Traceback" not in run.stderr and "scoring 16 prompt(s)" not in run.stderr
    assert not (out / "scores.csv").exists()
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".reach-")]  # the head's probe is gone


def test_a_model_only_on_the_drivers_disk_is_named_with_the_node(two_nodes, small_pool, tiny_model_dir, tmp_path):
    """--model a directory on the driver's disk only: the worker node's actor cannot load
    it. The error names the node and the directory. Before, the actor's constructor
    raised, and the driver said only 'the Ray engine failed: ActorDiedError: ...', after
    Ray Data's stack trace asking for a Ray bug report."""
    if two_nodes.own is None:
        pytest.skip("needs a node with a disk of its own (mount namespaces, unshare -m)")
    model = two_nodes.own / "model-here-only"
    shutil.copytree(tiny_model_dir, model)
    run = driver([small_pool, "--model", model, "--max-new-tokens", "2", "--cpus-per-worker", "2",
                  "--shards", tmp_path / "shards", "--out", tmp_path / "out"], two_nodes.address, timeout=120)
    assert run.returncode == 1, run.stderr[-3000:]
    error = run.stderr.strip().splitlines()[-1]
    assert error.startswith("taskdiv: error: a Ray worker on node ") and " could not start: " in error, error
    assert f"{model}: no such run or model directory" in error
    assert "Traceback" not in run.stderr and "Ray Core internal code" not in run.stderr
    assert not (tmp_path / "out" / "scores.csv").exists()
