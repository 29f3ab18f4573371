"""Selection strategies: which prompts of a pool to annotate under a budget.

One explicit registry, `STRATEGIES`, maps a name to a class. A strategy's `__init__`
only stores keyword parameters (randomness enters through `seed`, as one random key
per prompt drawn in id order: `Pool.random_keys`, so that the rows' order does not
change a selection); `select(...)`
returns a `Selection` with the chosen ids in rank order (a prefix of the ranking is a
sensible smaller selection) and, for task-based strategies, the allocation table.

    random                    B prompts uniformly from the pool
    full                      the whole pool (budget = pool size)
    proportional              stratified: b_t proportional to the task size n_t
    task-diversity            TaskDiversity (Algorithm 1): even spread, round robin
    weighted-task-diversity   WeightedTaskDiversity (Algorithm 2): b_t ~ 1 / C_t
    sharp-weighted-task-diversity
                              taskdiv's variant (not in the paper): b_t ~ C_t^-3, and every
                              task gets one prompt first when the budget allows
    kind-diversity            taskdiv's variant: even across kinds of task (yes/no, multiple
                              choice, generative) first, then even across each kind's tasks
    uncertainty               the B prompts with the lowest confidence
    k-center                  greedy farthest-point selection on prompt embeddings

Task-based strategies take `within=random|k-center|lowest-confidence` (how prompts
are picked inside a task), `min_per_task` and `max_per_task`; the others refuse them.
A misspelt parameter is refused with "did you mean".

The rules other modules ask about live here: `is_task_strategy(name)`, `check_within`
(which pickers exist), `Strategy.needs` and `Strategy.check_needs` (which inputs a
strategy reads, and the error when one is missing).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..common.errors import TaskdivError, unknown_name
from ..pool.container import Pool
from .allocation import MIN_CONFIDENCE, allocate

WITHIN = ("random", "k-center", "lowest-confidence")
# The parameters of task strategies (TaskAllocation) that no other strategy takes.
TASK_PARAMETERS = ("within", "min_per_task", "max_per_task")
# What each input a strategy may need is, and how the user provides it.
NEEDS = {"confidence": "prompt confidences: pass --scores (run `taskdiv score` to make them)",
         "embeddings": "prompt embeddings"}


def check_within(name: str) -> str:
    """A valid within-task picker, or an error with 'did you mean'."""
    if name not in WITHIN:
        raise unknown_name("within-task picker", name, WITHIN)
    return name


@dataclass
class Selection:
    ids: np.ndarray                      # chosen ids, rank order
    positions: np.ndarray                # their row positions in the pool
    allocation: pd.DataFrame | None = None  # task, available, taken, confidence, weight, allocated


@dataclass
class Inputs:
    """What a strategy may use besides the pool (aligned with the pool's rows)."""

    confidence: np.ndarray | None = None   # per prompt, NaN where unscored
    embeddings: np.ndarray | None = None   # (N, d) float32
    excluded: np.ndarray | None = None     # bool mask of already-annotated prompts


class Strategy:
    name = ""
    needs: frozenset = frozenset()   # subset of {"confidence", "embeddings"}

    def __init__(self, seed: int = 0, **unknown):
        if unknown:
            raise self._refuse(unknown)
        self.seed = seed

    @classmethod
    def parameters(cls) -> list[str]:
        """The keyword parameters this strategy takes (those of every __init__ in its class chain)."""
        names = []
        for klass in cls.__mro__:
            if "__init__" in vars(klass):
                names += [p.name for p in inspect.signature(klass.__init__).parameters.values()
                          if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                          and p.name != "self" and p.name not in names]
        return names

    def _refuse(self, unknown: dict) -> TaskdivError:
        task_only = [k for k in unknown if k in TASK_PARAMETERS]
        if task_only and len(task_only) == len(unknown):
            task_names = ", ".join(n for n in STRATEGIES if is_task_strategy(n))
            return TaskdivError(f"{', '.join(task_only)}: these options apply to task strategies ({task_names}), "
                                f"not {self.name!r}")
        name = next(k for k in unknown if k not in TASK_PARAMETERS)
        return unknown_name(f"parameter of strategy {self.name!r}", name, self.parameters())

    def check_needs(self, provided, among=tuple(NEEDS)) -> None:
        """Refuse a missing input: `provided` names the inputs at hand; only those in `among` are checked."""
        for need in sorted(self.needs & set(among) - set(provided)):
            raise TaskdivError(f"strategy {self.name!r} needs {NEEDS[need]}")

    def select(self, pool: Pool, budget: int, inputs: Inputs | None = None) -> Selection:
        inputs = inputs or Inputs()
        excluded = inputs.excluded if inputs.excluded is not None else np.zeros(len(pool), bool)
        available = int((~excluded).sum())
        if budget <= 0:
            raise TaskdivError(f"budget must be positive, got {budget}")
        if budget > available:
            taken = f" ({int(excluded.sum())} of {len(pool)} already annotated)" if excluded.any() else ""
            raise TaskdivError(f"budget {budget} is larger than the pool: {available} prompt(s) can be chosen{taken}")
        self.check_needs({need for need in NEEDS if getattr(inputs, need) is not None})
        positions, allocation = self._select(pool, budget, inputs, excluded)
        positions = np.asarray(positions, dtype=np.int64)
        assert len(positions) == budget and np.bincount(positions, minlength=1).max() == 1, \
            "strategy broke the budget"
        return Selection(pool.frame["id"].take(positions).to_numpy(), positions, allocation)

    def _select(self, pool, budget, inputs, excluded):  # pragma: no cover - abstract
        raise NotImplementedError


class Random(Strategy):
    name = "random"

    def _select(self, pool, budget, inputs, excluded):
        candidates = np.flatnonzero(~excluded)
        return candidates[_smallest(pool.random_keys(self.seed)[candidates], budget)], None


class Full(Strategy):
    name = "full"

    def _select(self, pool, budget, inputs, excluded):
        candidates = np.flatnonzero(~excluded)
        if budget != len(candidates):
            raise TaskdivError(f"strategy 'full' selects every prompt that can be chosen ({len(candidates)}); "
                               f"omit --budget (got {budget})")
        return candidates, None


class Uncertainty(Strategy):
    """Prompt-level uncertainty: the lowest confidences, ties in seeded random order."""

    name = "uncertainty"
    needs = frozenset({"confidence"})

    def _select(self, pool, budget, inputs, excluded):
        conf = inputs.confidence
        candidates = np.flatnonzero(~excluded & ~np.isnan(conf))
        if len(candidates) < budget:
            raise TaskdivError(f"strategy 'uncertainty' ranks scored prompts only: {len(candidates)} scored "
                               f"prompt(s) can be chosen, fewer than the budget {budget}; score more prompts")
        tiebreak = pool.random_keys(self.seed)[candidates]
        order = np.lexsort((tiebreak, conf[candidates]))
        return candidates[order[:budget]], None


class KCenter(Strategy):
    """Prompt diversity: greedy k-center on embeddings; annotated prompts are centers."""

    name = "k-center"
    needs = frozenset({"embeddings"})

    def _select(self, pool, budget, inputs, excluded):
        from .kcenter import k_center

        candidates = np.flatnonzero(~excluded)
        # In random-key order: the seeded first pick and argmax ties then do not depend on row order.
        candidates = candidates[np.argsort(pool.random_keys(self.seed)[candidates], kind="stable")]
        centers = np.flatnonzero(excluded)
        X = inputs.embeddings
        picks = k_center(X[candidates], budget, seed=self.seed,
                         initial=X[centers] if len(centers) else None)
        return candidates[picks], None


class TaskAllocation(Strategy):
    """Allocate the budget across tasks, then pick prompts within each task."""

    weights_need: frozenset = frozenset()  # inputs `_weights` reads (WeightedTaskDiversity: confidence)

    def __init__(self, seed: int = 0, within: str = "random", min_per_task: int = 0,
                 max_per_task: int | None = None, **params):
        super().__init__(seed=seed, **params)
        self.within, self.min_per_task, self.max_per_task = within, min_per_task, max_per_task

    @property
    def needs(self):
        extra = {"k-center": {"embeddings"}, "lowest-confidence": {"confidence"}}.get(self.within, set())
        return frozenset(extra) | self.weights_need

    def _select(self, pool, budget, inputs, excluded):
        check_within(self.within)
        tasks, codes = pool.task_codes()
        sizes = np.bincount(codes, minlength=len(tasks))
        taken = np.bincount(codes[excluded], minlength=len(tasks))
        conf = _task_confidence(codes, len(tasks), inputs.confidence)
        weights = self._weights(tasks, sizes - taken, conf)
        alloc = self._allocate(pool, codes, sizes, budget, weights, taken)
        new = alloc - taken
        positions, within_rank = self._pick(codes, new, inputs, excluded, pool.random_keys(self.seed))
        # Rank across tasks by each pick's place in its task's share (stride order), so that
        # a prefix of the ranking keeps the allocation's proportions; ties in task order.
        task_code = codes[positions]
        stride = (within_rank + 0.5) / np.maximum(new[task_code], 1)
        tiebreak = np.random.default_rng(self.seed + 1).permutation(len(tasks))[task_code]
        order = np.lexsort((tiebreak, stride))
        table = pd.DataFrame({"task": tasks, "available": sizes - taken, "taken": taken,
                              "confidence": conf, "weight": weights if weights is not None else 1.0,
                              "allocated": new})
        return positions[order], table

    def _weights(self, tasks, available, conf):
        """Per-task weights (None: even); `available`: prompts of each task still to choose from."""
        return None

    def _allocate(self, pool, codes, sizes, budget, weights, taken):
        """Prompts per task, what is taken included."""
        return allocate(sizes, budget, weights=weights, floor=self._floor(budget, sizes, taken),
                        ceilings=self.max_per_task, taken=taken, seed=self.seed)

    def _floor(self, budget, sizes, taken) -> int:
        return self.min_per_task

    def _pick(self, codes, new, inputs, excluded, key):
        """(positions, rank within task) of the picks: new[t] available prompts of each task t;
        `key`: the prompts' random keys (Pool.random_keys)."""
        n = len(codes)
        if self.within == "k-center":
            return self._pick_k_center(codes, new, inputs.embeddings, excluded, key)
        if self.within == "lowest-confidence":
            conf = inputs.confidence
            # Scored prompts first by confidence, then unscored ones in random order.
            key = np.where(np.isnan(conf), 2.0 + key, conf + key * 1e-12)
        key = np.where(excluded, np.inf, key)
        # Only rows that can be among their task's first new[t] keys take part in the sort.
        rows = _likely_picks(codes, new, key, excluded) if self.within == "random" else np.arange(n)
        key, codes = key[rows], codes[rows]
        # = np.lexsort((key, codes)), by two stable sorts: 1.5x faster on 10M prompts.
        by_key = np.argsort(key, kind="stable")
        order = by_key[np.argsort(codes[by_key].astype(np.int32 if len(new) < 2**31 else np.int64), kind="stable")]
        sorted_codes = codes[order]
        starts = np.searchsorted(sorted_codes, np.arange(len(new)))
        rank = np.arange(len(rows)) - starts[sorted_codes]
        chosen = rank < new[sorted_codes]
        return rows[order[chosen]], rank[chosen]

    def _pick_k_center(self, codes, new, X, excluded, key):
        from .kcenter import k_center

        positions, ranks = [], []
        for t in np.flatnonzero(new):
            rows = np.flatnonzero(codes == t)
            rows = rows[np.argsort(key[rows], kind="stable")]  # row order does not matter
            free, done = rows[~excluded[rows]], rows[excluded[rows]]
            picks = k_center(X[free], int(new[t]), seed=self.seed + int(t),
                             initial=X[done] if len(done) else None)
            positions.append(free[picks])
            ranks.append(np.arange(len(picks)))
        return np.concatenate(positions), np.concatenate(ranks)


class TaskDiversity(TaskAllocation):
    name = "task-diversity"


class Proportional(TaskAllocation):
    name = "proportional"

    def _weights(self, tasks, available, conf):
        return np.maximum(available, 1).astype(float)


class WeightedTaskDiversity(TaskAllocation):
    name = "weighted-task-diversity"
    weights_need = frozenset({"confidence"})

    def _weights(self, tasks, available, conf):
        # A task with nothing left to choose (all annotated in an earlier round) gets no new
        # prompt whatever its weight: it needs no confidence.
        missing = np.isnan(conf) & (available > 0)
        conf = np.where(np.isnan(conf), 1.0, conf)
        if missing.any():
            names = ", ".join(map(str, tasks[missing][:10]))
            raise TaskdivError(f"weighted-task-diversity needs a confidence for every task; "
                               f"{int(missing.sum())} task(s) have no scored prompt: {names}"
                               + (" ..." if missing.sum() > 10 else ""))
        return 1.0 / np.maximum(conf, MIN_CONFIDENCE)


class SharpWeightedTaskDiversity(WeightedTaskDiversity):
    """WeightedTaskDiversity with sharper weights w_t = C_t^-gamma (gamma=3) and one prompt
    per task first: taskdiv's variant, not the paper's.

    Why: a small model's task confidences span only about 0.5 to 0.8, so 1/C_t varies by
    1.6x and WTD allocates almost like TaskDiversity; C_t^-3 makes that about 4x. A sharper
    weighting alone would starve the most confident tasks, and a task's gain comes from its
    first few examples (../shared/EXPERIMENT-NOTES.md), so every task that has no annotation
    yet gets one first whenever the budget covers them all (a floor of max(1, min_per_task)).
    """

    name = "sharp-weighted-task-diversity"

    def __init__(self, seed: int = 0, gamma: float = 3.0, **params):
        super().__init__(seed=seed, **params)
        self.gamma = gamma

    def _weights(self, tasks, available, conf):
        return super()._weights(tasks, available, conf) ** self.gamma

    def _floor(self, budget, sizes, taken) -> int:
        uncovered = int(((taken == 0) & (sizes > 0)).sum())
        return max(self.min_per_task, 1) if uncovered <= budget else self.min_per_task


class KindDiversity(TaskAllocation):
    """The budget spread evenly across kinds of task first (the answer format: yes/no, multiple
    choice, generative, by the number of `choices` a task's prompts have), then evenly
    across the tasks of each kind: taskdiv's variant, not the paper's.

    Why: with a small model, what a few examples teach can be the answer format, which
    carries over between tasks of a kind (../shared/EXPERIMENT-NOTES.md); spreading across
    kinds first makes sure every format is taught whatever the kinds' task counts. A pool
    without `choices` is one kind, and this is task-diversity.
    """

    name = "kind-diversity"

    def _allocate(self, pool, codes, sizes, budget, weights, taken):
        kinds = task_kinds(pool, codes, len(sizes))
        names, kind_of = np.unique(kinds, return_inverse=True)
        kind_sizes = np.bincount(kind_of, weights=sizes, minlength=len(names)).astype(np.int64)
        kind_taken = np.bincount(kind_of, weights=taken, minlength=len(names)).astype(np.int64)
        if self.max_per_task is not None:  # a kind holds no more than its tasks' ceilings allow
            room = np.maximum(np.minimum(sizes, self.max_per_task), taken)
            kind_sizes = np.bincount(kind_of, weights=room, minlength=len(names)).astype(np.int64)
        per_kind = allocate(kind_sizes, budget, taken=kind_taken, seed=self.seed) - kind_taken
        alloc = taken.copy()
        for k in np.flatnonzero(per_kind):
            members = np.flatnonzero(kind_of == k)
            alloc[members] = allocate(sizes[members], int(per_kind[k]), floor=self._floor(budget, sizes, taken),
                                      ceilings=self.max_per_task, taken=taken[members], seed=self.seed + int(k) + 1)
        return alloc


def task_kinds(pool: Pool, codes: np.ndarray, n_tasks: int) -> np.ndarray:
    """Each task's kind: 'generative' (no choices), 'yes/no' (two) or 'multiple choice', the
    most common among its prompts (ties: the first of those)."""
    if "choices" not in pool.frame.columns:
        return np.full(n_tasks, "generative", dtype=object)
    count = pool.frame["choices"].map(lambda c: len(c) if isinstance(c, (list, tuple, np.ndarray)) else 0)
    kind = np.where(count.to_numpy() == 0, 0, np.where(count.to_numpy() == 2, 1, 2))
    table = np.zeros((n_tasks, 3), dtype=np.int64)
    np.add.at(table, (codes, kind), 1)
    return np.array(["generative", "yes/no", "multiple choice"], dtype=object)[table.argmax(axis=1)]


def _smallest(keys: np.ndarray, k: int) -> np.ndarray:
    """= np.argsort(keys, kind="stable")[:k], sorting only the keys up to the k-th smallest."""
    if k < len(keys):
        kth = np.partition(keys, k - 1)[k - 1]
        rows = np.flatnonzero(keys <= kth)  # every tie of the k-th key too, in row order
    else:
        rows = np.arange(len(keys))
    return rows[np.argsort(keys[rows], kind="stable")][:k]


def _likely_picks(codes: np.ndarray, new: np.ndarray, key: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Rows that hold, for every task t, its new[t] smallest uniform random keys.

    A task's k-th smallest of m uniform keys lies below (k + 3 sqrt(k) + 3) / m but for
    odds of about 1 in 300; rows under that threshold are kept, and a task that still falls
    short keeps all its rows, so the result is exact whatever the keys. On 10M prompts in
    100K tasks and a 5% budget it sorts about 15% of the rows instead of all of them."""
    n_tasks = len(new)
    free = np.bincount(codes[~excluded], minlength=n_tasks)
    limit = np.where(new > 0, (new + 3 * np.sqrt(new) + 3) / np.maximum(free, 1), -1.0)
    kept = key < limit[codes]
    short = np.bincount(codes[kept], minlength=n_tasks) < new
    if short.any():
        kept |= short[codes]
    return np.flatnonzero(kept)


def _task_confidence(codes, n_tasks, confidence) -> np.ndarray:
    """Mean confidence of the scored prompts of each task (NaN where none is scored)."""
    if confidence is None:
        return np.full(n_tasks, np.nan)
    scored = ~np.isnan(confidence)
    total = np.bincount(codes[scored], weights=confidence[scored], minlength=n_tasks)
    count = np.bincount(codes[scored], minlength=n_tasks)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (Random, Full, Proportional, TaskDiversity, WeightedTaskDiversity, SharpWeightedTaskDiversity,
                KindDiversity, Uncertainty, KCenter)
}


def strategy_class(name: str) -> type[Strategy]:
    """The registered class of `name`; unknown names fail with 'did you mean'."""
    if name not in STRATEGIES:
        raise unknown_name("strategy", name, STRATEGIES)
    return STRATEGIES[name]


def is_task_strategy(name: str) -> bool:
    """Whether `name` allocates the budget across tasks (and so takes within/min/max per task)."""
    return issubclass(strategy_class(name), TaskAllocation)


def get_strategy(name: str, **params) -> Strategy:
    """Instantiate a registered strategy. Unknown names and parameters fail with 'did you mean';
    task-strategy parameters given to another strategy fail too (one rule with `taskdiv select`)."""
    strategy = strategy_class(name)(**params)
    if "within" in params:
        check_within(params["within"])
    return strategy
