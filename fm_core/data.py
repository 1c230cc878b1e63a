"""Sequence datasets, token-budget batching with length bucketing, MLM collation, and the data module.

Every random choice in the input pipeline (crop window, masked positions, replacement tokens)
derives from a per-sample seed that the batch sampler draws from ``(seed, epoch)``. A sample is
therefore corrupted identically whatever the worker, batch composition or number of ranks.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fm_core.masking import IGNORE, MaskingConfig
from fm_core.padding import pad_batch
from fm_core.resume import resumable
from fm_core.tokenizer import Tokenizer

log = logging.getLogger(__name__)


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


class MLMCollator:
    """Samples -> padded, masked batch. Crops long records to a random window (as ESM does).

    ``packing=True``: the sequences go back to back in one row ``(1, N)`` with no padding, and
    ``seq_lens`` (S,) gives their lengths (the model's packed input). Masking is identical.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int, masking: MaskingConfig,
                 random_crop: bool = True, packing: bool = False):
        self.tok = tokenizer
        self.n_special = tokenizer.num_special_added
        self.max_regular = max_length - self.n_special
        if self.max_regular < 1:
            raise ValueError(f"max_length={max_length} leaves no room beside {self.n_special} special tokens")
        self.masking = masking.for_tokenizer(tokenizer)  # a strategy (fm_core.masking), picked by _target_
        self.random_crop = random_crop
        self.packing = packing
        self.special = torch.as_tensor(tokenizer.special_ids, dtype=torch.long)
        self.random_ids = torch.as_tensor(tokenizer.random_ids, dtype=torch.long)

    def crop(self, ids: np.ndarray, generator: torch.Generator) -> np.ndarray:
        extra = len(ids) - self.max_regular
        if extra <= 0:
            return ids
        start = int(torch.randint(extra + 1, (1,), generator=generator)) if self.random_crop else 0
        return ids[start : start + self.max_regular]

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        inputs, labels = [], []
        for s in samples:
            g = torch.Generator().manual_seed(int(s["seed"]))
            ids = torch.from_numpy(self.tok.add_special_tokens(self.crop(s["ids"], g)).astype(np.int64))
            x, y = self.masking(ids, ~torch.isin(ids, self.special), mask_id=self.tok.mask_id,
                                random_ids=self.random_ids, generator=g)
            inputs.append(x)
            labels.append(y)
        index = torch.tensor([int(s["index"]) for s in samples])
        if self.packing:
            return {
                "input_ids": torch.cat(inputs)[None],  # (1, N)
                "labels": torch.cat(labels)[None],  # (1, N)
                "seq_lens": torch.tensor([len(x) for x in inputs]),  # (S,)
                "index": index,
            }
        return {
            "input_ids": pad_batch(inputs, self.tok.pad_id),  # (B, L)
            "labels": pad_batch(labels, IGNORE),  # (B, L), IGNORE except at selected positions
            "index": index,
        }


DatasetFactory = Callable[..., SequenceDataset]


class MLMDataModule(L.LightningDataModule):
    """Train/validation sequence datasets behind token-budget batching and MLM collation.

    ``train``/``val`` are factories (Hydra ``_partial_``) called with ``tokenizer=``; the corpus
    (FASTA, shards, code) is theirs to read. ``max_length`` is the model's context length
    (``fm_core.train`` passes ``net.config.max_length``). ``packing=True`` packs each batch into one row without
    padding and counts real tokens against ``max_tokens``.
    """

    def __init__(self, tokenizer: Tokenizer, train: DatasetFactory, val: DatasetFactory, *,
                 max_length: int, max_tokens: int = 16384, max_batch_size: int | None = None,
                 masking: Any, num_workers: int = 0, seed: int = 0, packing: bool = False):
        super().__init__()
        self.tokenizer = tokenizer
        self.train_factory, self.val_factory = train, val
        self.max_length, self.max_tokens, self.max_batch_size = max_length, max_tokens, max_batch_size
        self.masking = masking  # a strategy (fm_core.masking), built from the data config's ``_target_``
        self.num_workers, self.seed = num_workers, seed
        self.packing = packing
        self.train_set: SequenceDataset | None = None
        self.val_set: SequenceDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self.train_factory(tokenizer=self.tokenizer)
            self.val_set = self.val_factory(tokenizer=self.tokenizer)
            for name, ds in (("train", self.train_set), ("val", self.val_set)):
                if len(ds) == 0:
                    raise ValueError(f"{name} dataset from {ds.stats.source} is empty after filtering: "
                                     f"{dict(ds.stats.rejected)}")

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def model_lengths(self, ds: SequenceDataset) -> np.ndarray:
        """Tokens each sample occupies in a batch: cropped, special tokens included."""
        return np.minimum(ds.lengths + self.tokenizer.num_special_added, self.max_length)

    def batch_sampler(self, ds: SequenceDataset, *, shuffle: bool) -> TokenBudgetBatchSampler:
        world, rank = self._world()
        return TokenBudgetBatchSampler(self.model_lengths(ds), self.max_tokens, shuffle=shuffle,
                                       seed=self.seed if shuffle else self.seed + 1,
                                       max_batch_size=self.max_batch_size, num_replicas=world, rank=rank,
                                       packed=self.packing)

    def collator(self) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
        """Samples -> a batch; subclasses with another objective (e.g. FIM) replace only this."""
        return MLMCollator(self.tokenizer, self.max_length, self.masking, packing=self.packing)

    def _loader(self, ds: SequenceDataset, *, train: bool) -> DataLoader:
        collate = self.collator()
        sampler = self.batch_sampler(ds, shuffle=train)
        if train:  # resumable mid-epoch: starts where a restored checkpoint left off (fm_core.resume)
            sampler = resumable(sampler, getattr(self, "trainer", None))
        return DataLoader(ds, batch_sampler=sampler, collate_fn=collate,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def unigram_log_probs(self) -> torch.Tensor:
        """(V,) log-frequencies of regular tokens in the training set (add-one smoothed): the
        context-free baseline a masked LM must beat."""
        v = self.tokenizer.vocab_size
        counts = self.train_set.token_counts(v).astype(np.float64)
        regular = np.ones(v, dtype=bool)
        regular[self.tokenizer.special_ids] = False
        counts = np.where(regular, counts + 1.0, 0.0)
        with np.errstate(divide="ignore"):
            logp = np.log(counts / counts.sum())
        return torch.as_tensor(np.where(regular, logp, -1e9), dtype=torch.float32)

    def stats(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, ds in (("train", self.train_set), ("val", self.val_set)):
            out.update(ds.stats.as_dict(f"data/{name}"))
            out[f"data/{name}_tokens"] = int(ds.lengths.sum())
            out[f"data/{name}_padding_fraction"] = self.batch_sampler(ds, shuffle=name == "train").padding_fraction()
        return out
