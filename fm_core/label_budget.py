"""A label budget: a seed-determined subset of a task's training split, taken by whole groups.

``task.train_size`` of every task with training data (``conf/task/*.yaml``): ``null`` keeps the whole
split, an integer N keeps about N records, a float in (0, 1] keeps that fraction of them. The task
supplies one group key per training record (a sequence cluster for proteins, a scaffold for
molecules, a file for code); whole groups are kept or dropped, so no group is split between the
labelled subset and the rest. The validation and test splits are never touched.

The groups are shuffled by ``seed`` (fm-finetune's ``seed``) and taken in that order, each one that
still fits in the budget, until the budget is met: the subset holds N records exactly whenever the
groups allow it (singletons do), never more, and at least one group. What was chosen goes into the
run's metrics (``data/train_size``, ``data/train_groups``, the pool they were drawn from)::

    budget = label_budget([c.cluster for c in chains], self.train_size, run.seed)
    chains = budget.take(chains)
    metrics.update(budget.metrics)
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from fm_core.errors import UserError

T = TypeVar("T")


class LabelBudgetError(UserError, ValueError):
    """``task.train_size`` is not a count, a fraction or null, or asks for more than the split holds."""


def budget_records(train_size: int | float | None, total: int) -> int:
    """How many training records ``train_size`` asks for out of ``total``: null = all, an int = that
    many, a float in (0, 1] = that fraction (rounded, at least 1)."""
    if train_size is None:
        return total
    if isinstance(train_size, bool) or not isinstance(train_size, int | float):
        raise LabelBudgetError(f"task.train_size={train_size!r}: give a count (e.g. 100), a fraction in (0, 1] "
                               "(e.g. 0.25) or null for the whole training split")
    if isinstance(train_size, float):
        if not 0.0 < train_size <= 1.0:
            raise LabelBudgetError(f"task.train_size={train_size}: a fraction must lie in (0, 1]; "
                                   "give an integer for a count of records")
        return max(1, int(round(train_size * total)))
    if train_size < 1:
        raise LabelBudgetError(f"task.train_size={train_size}: a count must be at least 1 (null = all)")
    if train_size > total:
        raise LabelBudgetError(f"task.train_size={train_size}: the training split holds only {total} records; "
                               f"give at most {total}, a fraction, or null for all of them")
    return int(train_size)


@dataclass(frozen=True)
class Subset:
    """The kept training records: ``indices`` (sorted, into the task's training list) and the
    counts for ``metrics.json``."""

    indices: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)

    def take(self, items: Sequence[T]) -> list[T]:
        """The kept ``items``, in their original order."""
        return [items[int(i)] for i in self.indices]

    def view(self, dataset: Any) -> SubsetDataset:
        """A sequence dataset (``fm_core.shards.ShardDataset``) restricted to the kept records."""
        return SubsetDataset(dataset, self.indices)


def label_budget(groups: Sequence[Hashable], train_size: int | float | None, seed: int) -> Subset:
    """The seed-determined subset of a training split of ``len(groups)`` records (``groups[i]`` is
    record i's group key) that ``train_size`` asks for, taken by whole groups."""
    keys = np.asarray([str(g) for g in groups])
    total = len(keys)
    if total == 0:
        raise LabelBudgetError("task.train_size: the training split is empty")
    target = budget_records(train_size, total)
    names, inverse = np.unique(keys, return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(names))
    chosen: list[int] = []
    kept = 0
    for g in np.random.default_rng(seed).permutation(len(names)):
        if kept + sizes[g] <= target:
            chosen.append(int(g))
            kept += int(sizes[g])
            if kept == target:
                break
    if not chosen:  # every group is larger than the budget: the first one in the seeded order
        first = int(np.random.default_rng(seed).permutation(len(names))[0])
        chosen, kept = [first], int(sizes[first])
    indices = np.flatnonzero(np.isin(inverse, chosen))
    metrics = {"data/train_size": int(len(indices)), "data/train_groups": len(chosen),
               "data/train_size_requested": "all" if train_size is None else train_size,
               "data/train_pool": total, "data/train_pool_groups": int(len(names))}
    return Subset(indices, metrics)


class SubsetDataset:
    """``dataset`` seen through ``indices``: the interface ``fm_core.data`` batches and collates
    (``len``, ``lengths``, ``ds[(i, seed)]``, ``array``, ``column``, ``token_counts``, ``stats``)."""

    def __init__(self, dataset: Any, indices: np.ndarray):
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)
        self.stats = dataset.stats

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def lengths(self) -> np.ndarray:
        return self.dataset.lengths[self.indices]

    def array(self, i: int) -> np.ndarray:
        return self.dataset.array(int(self.indices[i]))

    def column(self, name: str) -> np.ndarray:
        return np.asarray(self.dataset.column(name))[self.indices]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, seed = key if isinstance(key, tuple) else (key, key)
        return self.dataset[(int(self.indices[int(i)]), seed)]

    def token_counts(self, vocab_size: int) -> np.ndarray:
        counts = np.zeros(vocab_size, dtype=np.int64)
        for i in range(len(self)):
            counts += np.bincount(self.array(i), minlength=vocab_size)[:vocab_size]
        return counts


__all__ = ["LabelBudgetError", "Subset", "SubsetDataset", "budget_records", "label_budget"]
