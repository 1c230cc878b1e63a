"""Sequence datasets, token-budget batching with length bucketing, MLM collation, and the data module.

Every random choice in the input pipeline (crop window, masked positions, replacement tokens)
derives from a per-sample seed that the batch sampler draws from ``(seed, epoch)``. A sample is
therefore corrupted identically whatever the worker, batch composition or number of ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from fm_core.batching import ReadStats, SequenceDataset, TokenBudgetBatchSampler  # noqa: F401 (re-exported)
from fm_core.masking import IGNORE, MaskingConfig
from fm_core.padding import pad_batch
from fm_core.resume import resumable
from fm_core.tokenizer import Tokenizer

log = logging.getLogger(__name__)


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

    def collator(self, train: bool = True) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
        """Samples -> a batch (``train``: for the training loader, else validation); subclasses with
        another objective (e.g. FIM) replace only this."""
        return MLMCollator(self.tokenizer, self.max_length, self.masking, packing=self.packing)

    def _loader(self, ds: SequenceDataset, *, train: bool) -> DataLoader:
        collate = self.collator(train=train)
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
