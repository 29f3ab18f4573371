"""Progress bars (tqdm) that the CLI can turn off (--no-progress or TASKDIV_NO_PROGRESS=1)."""
from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def quiet_inner_progress():
    """One progress display for the whole grid: the stages' own bars (taskdiv's, datasets',
    transformers') are off while the block runs, and as they were afterwards."""
    restore = []
    previous = os.environ.get("TASKDIV_INNER_PROGRESS_OFF")
    os.environ["TASKDIV_INNER_PROGRESS_OFF"] = "1"
    try:
        import datasets

        if datasets.is_progress_bar_enabled():
            datasets.disable_progress_bars()
            restore.append(datasets.enable_progress_bars)
    except ImportError:
        pass
    try:
        from transformers.utils import logging as hf_logging

        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            restore.append(hf_logging.enable_progress_bar)
    except ImportError:
        pass
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TASKDIV_INNER_PROGRESS_OFF", None)
        else:
            os.environ["TASKDIV_INNER_PROGRESS_OFF"] = previous
        for undo in restore:
            undo()
