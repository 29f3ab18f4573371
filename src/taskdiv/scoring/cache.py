"""The score cache: generations keyed by (settings, prompt sha256) in SQLite, one transaction
a batch, so a killed run loses at most the batch in flight; OUT/cache.sqlite, and the shared
$TASKDIV_CACHE/scores/cache.sqlite every --out reads first (TASKDIV_SHARED_SCORES=0 turns it off).
"""
from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.errors import TaskdivError
from ..engines.local import Generation
from . import metrics as metrics_mod

log = logging.getLogger(__name__)


SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (settings TEXT PRIMARY KEY, description TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scores (
    settings TEXT NOT NULL, prompt_sha TEXT NOT NULL,
    generated TEXT NOT NULL, token_ids BLOB NOT NULL, logprobs BLOB NOT NULL, entropies BLOB NOT NULL,
    prompt_tokens INTEGER NOT NULL, truncated INTEGER NOT NULL, run TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (settings, prompt_sha));
"""


class ScoreCache:
    """SQLite store of generations, one row per (settings, prompt sha256)."""

    def __init__(self, path: Path, settings: dict):
        self.path = path
        self.settings_json = json.dumps(settings, sort_keys=True)
        self.key = hashlib.sha256(self.settings_json.encode()).hexdigest()[:24]
        self.run = f"{time.time():.6f}"
        self.conn = sqlite3.connect(str(path), timeout=60)
        try:
            with self.conn:
                self.conn.executescript(SCHEMA)
                self.conn.execute("INSERT OR IGNORE INTO settings VALUES (?, ?)", (self.key, self.settings_json))
        except sqlite3.DatabaseError as e:
            self.conn.close()
            raise TaskdivError(f"{path}: not a usable score cache ({e}); move it away to start afresh") from None

    def stored(self) -> set[str]:
        cur = self.conn.execute("SELECT prompt_sha FROM scores WHERE settings = ?", (self.key,))
        return {row[0] for row in cur}

    def add(self, rows: list[tuple[str, Generation, str, int, bool]]) -> None:
        """Store one batch in one transaction: (sha, generation, text, prompt tokens, truncated)."""
        now = time.time()
        with self.conn:
            self.conn.executemany(
                "INSERT OR IGNORE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(self.key, sha, text, np.asarray(g.token_ids, dtype=np.int32).tobytes(), g.logprobs.tobytes(),
                  g.entropies.tobytes(), n_prompt, int(trunc), self.run, now)
                 for sha, g, text, n_prompt, trunc in rows])

    def read(self, shas) -> pd.DataFrame:
        """Metrics and text of the stored rows among `shas`, indexed by sha."""
        wanted = set(shas)
        records = []
        cur = self.conn.execute("SELECT prompt_sha, generated, logprobs, entropies, prompt_tokens, truncated "
                                "FROM scores WHERE settings = ?", (self.key,))
        for sha, text, lp, ent, n_prompt, trunc in cur:
            if sha not in wanted:
                continue
            lp, ent = np.frombuffer(lp, dtype=np.float32), np.frombuffer(ent, dtype=np.float32)
            records.append({"prompt_sha": sha, **metrics_mod.compute_all(lp, ent), "generated": text,
                            "tokens": len(lp), "prompt_tokens": n_prompt, "truncated": bool(trunc)})
        cols = ["prompt_sha", *metrics_mod.METRICS, "generated", "tokens", "prompt_tokens", "truncated"]
        return pd.DataFrame.from_records(records, columns=cols).set_index("prompt_sha")

    def copy_from(self, other: "ScoreCache", shas) -> int:
        """Copy `other`'s rows of these prompt shas (same settings) into this cache, in one
        transaction; returns how many were new here."""
        shas = list(shas)
        rows = []
        for start in range(0, len(shas), 500):  # SQLite's limit on bound parameters
            chunk = shas[start:start + 500]
            rows += other.conn.execute(
                f"SELECT * FROM scores WHERE settings = ? AND prompt_sha IN ({','.join('?' * len(chunk))})",
                (other.key, *chunk)).fetchall()
        if not rows:
            return 0
        with self.conn:
            self.conn.execute("INSERT OR IGNORE INTO settings VALUES (?, ?)", (self.key, self.settings_json))
            before = self.conn.total_changes
            self.conn.executemany("INSERT OR IGNORE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                  [(self.key, *row[1:]) for row in rows])
            return self.conn.total_changes - before

    def close(self) -> None:
        self.conn.close()


def shared_cache(settings: dict) -> "ScoreCache | None":
    """The score cache every --out shares, in $TASKDIV_CACHE/scores (`taskdiv cache info`);
    None when TASKDIV_SHARED_SCORES=0 or it cannot be opened (a run then keeps its own)."""
    import os

    from ..common.paths import cache_dir

    if os.environ.get("TASKDIV_SHARED_SCORES", "1") == "0":
        return None
    try:
        return ScoreCache(cache_dir("scores") / "cache.sqlite", settings)
    except (TaskdivError, OSError, sqlite3.Error) as e:
        log.warning("the shared score cache cannot be used (%s); scoring with this run's own cache only", e)
        return None


def prompt_sha(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()
