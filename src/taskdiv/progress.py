"""Progress bars (tqdm) that the CLI can turn off (--no-progress or TASKDIV_NO_PROGRESS=1)."""
from __future__ import annotations

import os


def enabled() -> bool:
    return os.environ.get("TASKDIV_NO_PROGRESS", "") in ("", "0")


def bar(iterable=None, **kwargs):
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not enabled())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
