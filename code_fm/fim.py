"""Fill-in-the-middle (FIM) training data for the causal code model.

Bavarian et al. 2022 ("Efficient Training of Language Models to Fill in the Middle"), as used by
SantaCoder and StarCoder: a training window is, with probability ``fim_rate``, cut at two random
*character* positions into prefix / middle / suffix, each piece tokenized on its own (so the
model sees the token boundaries it will see at inference, where the cursor splits the text), and
laid out as

- PSM: ``<fim_prefix> P <fim_suffix> S <fim_middle> M <eos>``
- SPM (StarCoder's variant): ``<fim_prefix> <fim_suffix> S <fim_middle> P M <eos>``

otherwise as plain left-to-right text ``<cls> text``. The loss is next-token prediction on every
position.

Retrieved context in the window (RepoCoder's inference layout, trained as RepoFormer and
aiXcoder train it): with a ``context`` provider, a share ``context_rate`` of the training windows
is shortened by ``context_tokens`` and gets code retrieved from other files ahead of the text it
continues: ``<cls> R text`` or ``<fim_prefix> R P <fim_suffix> S <fim_middle> M`` (SPM: R ahead of
P), the layout ``fm-complete`` builds at inference (``Completer.prompt(preamble=...)``). The query
is what a cursor would have before it: the prefix ``P`` (FIM), the window's first half (plain).
Validation windows never get context (their loss stays comparable across rates).

Randomness comes from each sample's seed (``fm_core.data``'s convention). The layout itself is
``code_fm.fim_format`` (shared with inference, free of Lightning).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from code_fm.fim_format import FIMTokenizer, fim_layout
from fm_core.masking import IGNORE
from fm_core.padding import pad_batch
from fm_core.shard_data import ShardDataModule


class FIMCollator:
    """Token windows -> left-to-right or FIM sequences with next-token labels, right-padded."""

    def __init__(self, tokenizer: FIMTokenizer, max_length: int, *, fim_rate: float, spm_rate: float,
                 context: Callable[[int, str], list[int]] | None = None, context_rate: float = 0.0,
                 context_tokens: int = 0):
        if not (0 <= fim_rate <= 1 and 0 <= spm_rate <= 1 and 0 <= context_rate <= 1):
            raise ValueError(f"fim_rate, spm_rate and context_rate must lie in [0, 1], got {fim_rate}, {spm_rate}, "
                             f"{context_rate}")
        if context is not None and not 0 < context_tokens < max_length // 2 + 1:
            raise ValueError(f"context_tokens must lie in (0, max_length / 2], got {context_tokens} for {max_length}")
        self.tok, self.max_length, self.fim_rate, self.spm_rate = tokenizer, max_length, fim_rate, spm_rate
        # context(record index, text before the cursor) -> retrieved token ids (at most context_tokens)
        self.context, self.context_rate, self.context_tokens = context, context_rate, context_tokens

    def sequence(self, ids: np.ndarray, g: torch.Generator, index: int = -1) -> list[int]:
        # the draw exists only with a provider: runs without one keep their sample streams
        retrieve = self.context is not None and float(torch.rand((), generator=g)) < self.context_rate
        room = self.max_length - 4 - (self.context_tokens if retrieve else 0)  # three sentinels + eos, or <cls>
        if len(ids) > room:
            start = int(torch.randint(len(ids) - room + 1, (1,), generator=g))
            ids = ids[start : start + room]
        if float(torch.rand((), generator=g)) >= self.fim_rate:
            pre = self.retrieved(index, self.tok.decode(ids[: len(ids) // 2])) if retrieve else []
            return [self.tok.bos_id, *pre, *map(int, ids)]
        text = self.tok.decode(ids)
        a, b = sorted(int(x) for x in torch.randint(len(text) + 1, (2,), generator=g))
        p, m, s = (self.tok.encode(t) for t in (text[:a], text[a:b], text[b:]))
        spm = float(torch.rand((), generator=g)) < self.spm_rate
        pre = self.retrieved(index, text[:a]) if retrieve else []
        return fim_layout(self.tok, [*pre, *map(int, p)], m, s, spm)[: self.max_length - 1] + [self.tok.eos_id]

    def retrieved(self, index: int, query: str) -> list[int]:
        if self.context is None or index < 0:
            raise ValueError(f"retrieved context needs a provider and the record's index, got index {index}")
        return list(map(int, self.context(index, query)))[: self.context_tokens]

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [self.sequence(s["ids"], torch.Generator().manual_seed(int(s["seed"])), int(s["index"]))
                for s in samples]
        inputs = pad_batch(seqs, self.tok.pad_id)  # (B, L)
        labels = pad_batch([x[1:] for x in seqs], IGNORE, width=inputs.shape[1])  # i predicts i + 1
        return {"input_ids": inputs, "labels": labels, "index": torch.tensor([int(s["index"]) for s in samples])}


class FIMDataModule(ShardDataModule):
    """``ShardDataModule`` (an ``fm-prep code`` directory) with FIM / left-to-right collation; the
    rates come from the task's config (``conf/task/code_completion.yaml``)."""

    def __init__(self, tokenizer: FIMTokenizer, dir: str, *, fim_rate: float, spm_rate: float,
                 context: Callable[[int, str], list[int]] | None = None, context_rate: float = 0.0,
                 context_tokens: int = 0, **kwargs: Any):
        super().__init__(tokenizer, dir, masking=None, **kwargs)  # FIM windows, not masking: see collator()
        self.fim_rate, self.spm_rate = fim_rate, spm_rate
        self.context, self.context_rate, self.context_tokens = context, context_rate, context_tokens

    def model_lengths(self, ds: Any) -> np.ndarray:
        """Batch sizing: a training window may carry ``context_tokens`` of retrieved code beside its own
        tokens (and three sentinels + eos), so short files are counted at that size."""
        if self.context is None or ds is not self.train_set:
            return super().model_lengths(ds)
        return np.minimum(ds.lengths + 4 + self.context_tokens, self.max_length)

    def collator(self, train: bool = True) -> FIMCollator:
        # batching, the per-epoch sample seeds and mid-epoch resume stay MLMDataModule's;
        # retrieved context only in training windows (the provider indexes the train split)
        extra = ({"context": self.context, "context_rate": self.context_rate, "context_tokens": self.context_tokens}
                 if train and self.context is not None else {})
        return FIMCollator(self.tokenizer, self.max_length, fim_rate=self.fim_rate, spm_rate=self.spm_rate, **extra)


__all__ = ["FIMCollator", "FIMDataModule"]
