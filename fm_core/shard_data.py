"""Training from prepared shards: ESM-2 style cluster sampling and the data module.

``ClusterSampledBatchSampler`` samples training data the way ESM-2 samples UniRef50: each epoch
draws one member from every cluster (seeded by ``(seed, epoch)``), then batches those by token
budget. ``ShardDataModule`` is ``MLMDataModule`` reading an ``fm-prep`` output directory.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from fm_core.data import MLMDataModule, TokenBudgetBatchSampler
from fm_core.shards import ShardDataset
from fm_core.tokenizer import Tokenizer


class ClusterSampledBatchSampler(Sampler[list[tuple[int, int]]]):
    """Each epoch: one random member per cluster (ESM-2's UniRef50 -> UniRef90 sampling), then
    token-budget batches over those members (``TokenBudgetBatchSampler``, rank-aware).

    The members and the batches depend only on ``(seed, epoch)``, so all ranks agree; each rank
    takes its own share of the batches. The batch count can differ slightly between epochs
    (members differ in length).
    """

    def __init__(self, lengths: np.ndarray, clusters: np.ndarray, max_tokens: int, *, seed: int = 0,
                 max_batch_size: int | None = None, num_replicas: int = 1, rank: int = 0,
                 packed: bool = False):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.packed = packed
        self.clusters = np.asarray(clusters, dtype=np.int64)
        if len(self.clusters) != len(self.lengths):
            raise ValueError(f"{len(self.clusters)} cluster ids for {len(self.lengths)} samples")
        self.max_tokens, self.seed, self.max_batch_size = max_tokens, seed, max_batch_size
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self._cache: tuple[int, np.ndarray, TokenBudgetBatchSampler] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def members(self, epoch: int) -> np.ndarray:
        """Indices of the members drawn for ``epoch``: exactly one per cluster, sorted."""
        rng = np.random.default_rng([self.seed, epoch, 0x5EED])
        order = np.lexsort((rng.random(len(self.clusters)), self.clusters))
        first = np.ones(len(order), dtype=bool)
        first[1:] = self.clusters[order[1:]] != self.clusters[order[:-1]]
        return np.sort(order[first])

    def _inner(self) -> tuple[np.ndarray, TokenBudgetBatchSampler]:
        if self._cache is None or self._cache[0] != self.epoch:
            chosen = self.members(self.epoch)
            inner = TokenBudgetBatchSampler(self.lengths[chosen], self.max_tokens, shuffle=True, seed=self.seed,
                                            max_batch_size=self.max_batch_size,
                                            num_replicas=self.num_replicas, rank=self.rank,
                                            packed=self.packed)
            inner.set_epoch(self.epoch)
            self._cache = (self.epoch, chosen, inner)
        return self._cache[1], self._cache[2]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        chosen, inner = self._inner()
        for batch in inner:
            yield [(int(chosen[i]), seed) for i, seed in batch]

    def __len__(self) -> int:
        return len(self._inner()[1])

    def padding_fraction(self) -> float:
        return self._inner()[1].padding_fraction()


class ShardDataModule(MLMDataModule):
    """``MLMDataModule`` over an ``fm-prep`` output directory (``<dir>/train``, ``<dir>/valid``).

    ``cluster_sampling=True`` trains on one member per cluster per epoch (needs a ``cluster``
    column, which ``fm-prep protein`` writes); validation always uses every record.
    """

    def __init__(self, tokenizer: Tokenizer, dir: str, *, train_split: str = "train", val_split: str = "valid",
                 cluster_sampling: bool = False, verify: bool = False, train: Any = None, val: Any = None,
                 **kwargs: Any):
        if train is not None or val is not None:
            raise ValueError("ShardDataModule reads <dir>/<train_split> and <dir>/<val_split>; "
                             "train/val factories are not used (set them to null)")
        root = Path(dir)
        super().__init__(tokenizer, functools.partial(ShardDataset, root / train_split, verify=verify),
                         functools.partial(ShardDataset, root / val_split, verify=verify), **kwargs)
        self.dir, self.cluster_sampling = root, cluster_sampling

    def batch_sampler(self, ds, *, shuffle: bool):
        if not (shuffle and self.cluster_sampling):
            return super().batch_sampler(ds, shuffle=shuffle)
        world, rank = self._world()
        return ClusterSampledBatchSampler(self.model_lengths(ds), ds.column("cluster"), self.max_tokens,
                                          seed=self.seed, max_batch_size=self.max_batch_size,
                                          num_replicas=world, rank=rank, packed=self.packing)
