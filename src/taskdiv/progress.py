"""Progress bars (tqdm) that the CLI can turn off (--no-progress or TASKDIV_NO_PROGRESS=1)."""
from __future__ import annotations

import os


def enabled() -> bool:
    return os.environ.get("TASKDIV_NO_PROGRESS", "") in ("", "0")


def bar(iterable=None, *, outer: bool = False, **kwargs):
    """A tqdm bar. Inside an experiment only the grid's own (`outer`) bar is shown."""
    from tqdm.auto import tqdm

    inner_off = os.environ.get("TASKDIV_INNER_PROGRESS_OFF") == "1" and not outer
    kwargs.setdefault("disable", not enabled() or inner_off)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
