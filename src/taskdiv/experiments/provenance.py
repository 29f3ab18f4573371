"""Which code made a result: the git commit of the taskdiv source that ran, recorded in every
result.json.
"""
from __future__ import annotations

import subprocess
from pathlib import Path


def _short(commit: str) -> str:
    return commit[:7] + ("+dirty" if commit.endswith("+dirty") else "")


def code_version() -> str | None:
    """The git commit of the taskdiv source that ran (with '+dirty' for uncommitted changes),
    or None outside a git checkout; recorded in every result.json."""
    src = Path(__file__).resolve().parents[1]  # the whole taskdiv package, not this folder of it
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", str(src)],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
