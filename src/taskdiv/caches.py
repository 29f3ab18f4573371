"""`taskdiv cache info` and `taskdiv cache clear`: what taskdiv keeps in its cache, and freeing it.

    taskdiv cache info                 every part, its size, and the score cache by settings
    taskdiv cache clear scores         drop the shared score cache (runs keep their own)
    taskdiv cache clear all            everything (models are converted again on first use)

The cache is $TASKDIV_CACHE, else $XDG_CACHE_HOME/taskdiv (`paths.cache_dir`):
    scores/     the score cache every --out shares (`taskdiv.scoring.cache`)
    embeddings/ prompt embeddings (`taskdiv.selection.embeddings`)
    models/     the embedded GGUF models dequantized to safetensors (rebuilt on first use)
    judge/      the LLM judge's verdicts, verdicts.sqlite (`taskdiv.evaluation.judge`; a rerun asks nothing twice)
    bigbench-1.0.0/  BIG-bench's task files, where the sdist was available
"""
from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from .common.errors import TaskdivError
from .common.locks import locked
from .common.paths import cache_dir

PARTS = ("scores", "embeddings", "models", "judge", "bigbench-1.0.0")


@dataclass
class CacheInfoConfig:
    pass


@dataclass
class CacheClearConfig:
    what: str | None = field(default=None, metadata={
        "positional": True, "required": True, "choices": [*PARTS, "all"],
        "help": f"What to clear: {', '.join(PARTS)}, or all."})


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def score_settings(root: Path) -> list[dict]:
    """The shared score cache's settings (model fingerprint, dtype, tokens, ...) and rows of each."""
    db = root / "scores" / "cache.sqlite"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(str(db), timeout=60) as conn:
            described = dict(conn.execute("SELECT settings, description FROM settings"))
            counts = dict(conn.execute("SELECT settings, COUNT(*) FROM scores GROUP BY settings"))
    except sqlite3.DatabaseError as e:
        raise TaskdivError(f"{db}: not a readable score cache ({e}); `taskdiv cache clear scores` removes it") \
            from None
    return [{"key": key, "rows": counts.get(key, 0), **json.loads(text)} for key, text in described.items()]


def run_cache_info(cfg: CacheInfoConfig) -> None:
    root = cache_dir()
    print(f"cache: {root}")
    total = 0
    for part in PARTS:
        size = size_of(root / part)
        total += size
        if (root / part).exists():
            print(f"  {part + '/':18s} {_human(size):>10s}")
    print(f"  {'total':18s} {_human(size_of(root)):>10s}")
    for s in score_settings(root):
        print(f"  scores: {s['rows']} prompt(s) for model {s.get('model')} ({s.get('dtype')}, max_new_tokens "
              f"{s.get('max_new_tokens')}, chat {s.get('chat')}{', engine ' + s['engine'] if 'engine' in s else ''})")


def run_cache_clear(cfg: CacheClearConfig) -> None:
    if cfg.what not in (*PARTS, "all"):
        raise TaskdivError(f"cache clear: unknown part {cfg.what!r} (known: {', '.join(PARTS)}, all)")
    parts = PARTS if cfg.what == "all" else (cfg.what,)
    root = cache_dir()
    with locked(root, "clearing the cache"):  # not while a fetch or another clear holds it
        for part in parts:
            path = root / part
            if path.exists():
                size = size_of(path)
                shutil.rmtree(path)
                print(f"removed {path} ({_human(size)})")
