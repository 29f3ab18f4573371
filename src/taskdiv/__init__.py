"""taskdiv: label-efficient SFT: choose which prompts to annotate by task diversity and model confidence.

    import taskdiv
    pool = taskdiv.load_pool("prompts.jsonl")            # or a DataFrame, a datasets.Dataset, a list of dicts
    scores, tasks = taskdiv.score(pool, model="gemma-3-270m", per_task=16)
    selection, allocation = taskdiv.select(pool, 1000, scores=scores)
    taskdiv.allocate([2, 6, 10], 9)                       # the allocation alone
    run = taskdiv.train(annotated, model="smollm2-135m-instruct", out="runs/ft")   # rows with responses
    taskdiv.evaluate(run, out="runs/ft-eval")["macro"]
    taskdiv.experiment("configs/cpu-small.yaml", out="results/mine"); taskdiv.write_report("results/mine")

The names are imported on first use, so `import taskdiv` stays light (no torch).
See `taskdiv.api` and the docs' API page. Every error taskdiv raises for bad input or a
failed step is a `taskdiv.TaskdivError` (`taskdiv.DataError` for bad data, naming file,
row and field).
"""
from .common.version import __version__

__all__ = ["load_pool", "score", "select", "allocate", "train", "evaluate", "experiment", "write_report", "Pool",
           "TaskdivError", "DataError", "__version__"]


def __getattr__(name):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'taskdiv' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
