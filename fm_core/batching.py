"""Sequence datasets, token-budget batching with length bucketing, and the read/kept/rejected
counts of a reader.

Apart from ``fm_core.data`` (which re-exports them) so that the inference paths (``fm-embed``,
scoring) batch without importing Lightning: its import alone costs ~8 CPU-s and ~200 MB of RSS
(bench/embed_peers.json).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Sampler


class ReadStats:
    """Counts of a reader: every record read is either kept or rejected for a named reason."""

    def __init__(self, source: str):
        self.source = source
        self.read = 0
        self.kept = 0
        self.rejected: Counter[str] = Counter()
        self.examples: list[str] = []  # first few rejection messages, for the log
        self.notes: Counter[str] = Counter()  # kept records worth a count (e.g. duplicate_ids)

    def reject(self, reason: str, message: str) -> None:
        self.rejected[reason] += 1
        if len(self.examples) < 5:
            self.examples.append(message)

    def as_dict(self, prefix: str) -> dict[str, int]:
        out = {f"{prefix}_read": self.read, f"{prefix}_kept": self.kept}
        out.update({f"{prefix}_rejected_{k}": v for k, v in sorted(self.rejected.items())})
        out.update({f"{prefix}_{k}": v for k, v in sorted(self.notes.items())})
        return out

    def check(self) -> None:
        if self.read != self.kept + sum(self.rejected.values()):
            raise AssertionError(f"{self.source}: read {self.read} != kept {self.kept} + rejected {self.rejected}")


class SequenceDataset(Dataset):
    """Variable-length token arrays in one flat buffer (compact for millions of records).

    ``dataset[i]`` or ``dataset[(i, seed)]`` -> ``{"ids": array, "seed": seed, "index": i}``.
    """

    def __init__(self, arrays: Sequence[np.ndarray], names: Sequence[str], stats: ReadStats):
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        self.offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        dtype = np.result_type(*[a.dtype for a in arrays[:1]]) if arrays else np.uint8
        self.buffer = np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)
        self.names = list(names)
        self.stats = stats

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def array(self, i: int) -> np.ndarray:
        return self.buffer[self.offsets[i] : self.offsets[i + 1]]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, seed = key if isinstance(key, tuple) else (key, key)
        return {"ids": self.array(i), "seed": seed, "index": i}

    def token_counts(self, vocab_size: int) -> np.ndarray:
        return np.bincount(self.buffer, minlength=vocab_size).astype(np.int64)


class TokenBudgetBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches whose padded size (batch size x longest member) stays within ``max_tokens``.

    Samples are sorted by length (ties broken at random each epoch) and cut greedily, so padding
    is a small fraction of compute; batch order is shuffled per epoch. Because the greedy cut
    depends only on the sorted lengths, the number of batches is the same every epoch. With
    several ranks each takes every ``num_replicas``-th batch; no sample is seen twice per epoch
    across ranks. In training (``shuffle=True``) the count is trimmed to a multiple of the ranks so
    all step together (the trimmed batches differ each epoch); evaluation keeps every batch, so a
    validation metric over all ranks covers exactly the samples a single process would see.

    ``packed=True`` counts real tokens (the sum of lengths) against the budget instead of the
    padded size, for batches that are packed into one row without padding (``MLMCollator(packing=True)``).
    """

    def __init__(self, lengths: np.ndarray, max_tokens: int, *, shuffle: bool = True, seed: int = 0,
                 max_batch_size: int | None = None, num_replicas: int = 1, rank: int = 0,
                 packed: bool = False):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if len(self.lengths) and self.lengths.max() > max_tokens:
            raise ValueError(f"max_tokens={max_tokens} is smaller than the longest sample "
                             f"({self.lengths.max()} tokens): raise max_tokens or lower max_length")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.max_tokens, self.shuffle, self.seed = max_tokens, shuffle, seed
        self.max_batch_size = max_batch_size or len(self.lengths) or 1
        self.num_replicas, self.rank = num_replicas, rank
        self.packed = packed
        self.epoch = 0
        self._cache: tuple[int, list[np.ndarray], np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _plan(self) -> tuple[list[np.ndarray], np.ndarray]:
        epoch = self.epoch if self.shuffle else 0  # evaluation: same batches and seeds every time
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1], self._cache[2]
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.lengths)
        seeds = rng.integers(0, 2**62, size=n)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        order = order[np.argsort(self.lengths[order], kind="stable")]
        batches, start = [], 0
        sorted_lengths = self.lengths[order]
        while start < n:
            # longest member is the last one (sorted ascending); grow while the budget allows
            end, total = start + 1, int(sorted_lengths[start])
            while end < n and end - start < self.max_batch_size:
                size = (total + sorted_lengths[end]) if self.packed else (end - start + 1) * sorted_lengths[end]
                if size > self.max_tokens:
                    break
                total += int(sorted_lengths[end])
                end += 1
            batches.append(order[start:end])
            start = end
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        usable = len(batches) - len(batches) % self.num_replicas if self.shuffle else len(batches)
        mine = batches[:usable][self.rank :: self.num_replicas]
        self._cache = (epoch, mine, seeds)
        return mine, seeds

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batches, seeds = self._plan()
        for batch in batches:
            yield [(int(i), int(seeds[i])) for i in batch]

    def __len__(self) -> int:
        return len(self._plan()[0])

    def padding_fraction(self) -> float:
        """Share of padding in the (B, L) batches; packed batches have none."""
        if self.packed:
            return 0.0
        batches, _ = self._plan()
        real = sum(int(self.lengths[b].sum()) for b in batches)
        padded = sum(len(b) * int(self.lengths[b].max()) for b in batches)
        return 1.0 - real / max(padded, 1)
