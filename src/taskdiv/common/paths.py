"""Where taskdiv keeps and finds things: its cache directory (`cache_dir`) and the local benchmark
collections (`data_root`).
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """taskdiv's cache directory ($TASKDIV_CACHE, else $XDG_CACHE_HOME/taskdiv)."""
    root = os.environ.get("TASKDIV_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "taskdiv")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_root(kind: str | None = None) -> Path | None:
    """Where the local benchmark collections are (mmlu/, bbh/, gauntlet/, alpaca_eval/):
    $TASKDIV_DATA (set by `--data-dir`), else `../shared/data` beside the working directory,
    else `shared/data` beside the repository this code runs from; with `kind`, that
    collection's folder. None when there is none."""
    env = os.environ.get("TASKDIV_DATA")
    if env:
        roots = [Path(env)]
    else:
        here = Path(__file__).resolve()  # src/taskdiv/common/paths.py: parents[4] is the folder the repository is in
        roots = [Path.cwd().parent / "shared" / "data"]
        if len(here.parents) > 4:
            roots.append(here.parents[4] / "shared" / "data")
    for root in roots:
        path = root / kind if kind else root
        if path.is_dir():
            return path
    return None
