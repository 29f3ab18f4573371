"""Progress bars (tqdm) that the CLI can turn off (--no-progress or TASKDIV_NO_PROGRESS=1)."""
from __future__ import annotations

import contextlib
import os
import warnings


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
def quiet_inner_progress(*, ours: bool = True, ignore: tuple[type[Warning], ...] = ()):
    """The libraries' progress bars (datasets', transformers') off while the block runs, and as
    they were afterwards: the one way to quiet inner progress bars. `ours`: taskdiv's own inner
    bars too (an experiment shows one display for the whole grid); `train` keeps its step bar
    and passes False. `ignore`: warning categories hidden meanwhile (train's FutureWarnings)."""
    restore = []
    previous = os.environ.get("TASKDIV_INNER_PROGRESS_OFF")
    if ours:
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
        with warnings.catch_warnings() if ignore else contextlib.nullcontext():  # else: filters untouched
            for category in ignore:
                warnings.filterwarnings("ignore", category=category)
            yield
    finally:
        if ours:
            if previous is None:
                os.environ.pop("TASKDIV_INNER_PROGRESS_OFF", None)
            else:
                os.environ["TASKDIV_INNER_PROGRESS_OFF"] = previous
        for undo in restore:
            undo()
