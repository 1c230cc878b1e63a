"""Fill-in-the-middle (FIM) training data for the causal code model.

Bavarian et al. 2022 ("Efficient Training of Language Models to Fill in the Middle"), as used by
SantaCoder and StarCoder: a training window is, with probability ``fim_rate``, cut at two random
*character* positions into prefix / middle / suffix, each piece tokenized on its own (so the
model sees the token boundaries it will see at inference, where the cursor splits the text), and
laid out as

- PSM: ``<fim_prefix> P <fim_suffix> S <fim_middle> M <eos>``
- SPM (StarCoder's variant): ``<fim_prefix> <fim_suffix> S <fim_middle> P M <eos>``

otherwise as plain left-to-right text ``<cls> text``. The loss is next-token prediction on every
position. Randomness comes from each sample's seed (``fm_core.data``'s convention). The layout
itself is ``code_fm.fim_format`` (shared with inference, free of Lightning).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from code_fm.fim_format import FIMTokenizer, fim_layout
from fm_core.masking import IGNORE
from fm_core.padding import pad_batch
from fm_core.shard_data import ShardDataModule


class FIMCollator:
    """Token windows -> left-to-right or FIM sequences with next-token labels, right-padded."""

    def __init__(self, tokenizer: FIMTokenizer, max_length: int, *, fim_rate: float, spm_rate: float):
        if not (0 <= fim_rate <= 1 and 0 <= spm_rate <= 1):
            raise ValueError(f"fim_rate and spm_rate must lie in [0, 1], got {fim_rate}, {spm_rate}")
        self.tok, self.max_length, self.fim_rate, self.spm_rate = tokenizer, max_length, fim_rate, spm_rate

    def sequence(self, ids: np.ndarray, g: torch.Generator) -> list[int]:
        room = self.max_length - 4  # three sentinels + eos, or <cls>
        if len(ids) > room:
            start = int(torch.randint(len(ids) - room + 1, (1,), generator=g))
            ids = ids[start : start + room]
        if float(torch.rand((), generator=g)) >= self.fim_rate:
            return [self.tok.bos_id, *map(int, ids)]
        text = self.tok.decode(ids)
        a, b = sorted(int(x) for x in torch.randint(len(text) + 1, (2,), generator=g))
        p, m, s = (self.tok.encode(t) for t in (text[:a], text[a:b], text[b:]))
        spm = float(torch.rand((), generator=g)) < self.spm_rate
        return fim_layout(self.tok, p, m, s, spm)[: self.max_length - 1] + [self.tok.eos_id]

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [self.sequence(s["ids"], torch.Generator().manual_seed(int(s["seed"]))) for s in samples]
        inputs = pad_batch(seqs, self.tok.pad_id)  # (B, L)
        labels = pad_batch([x[1:] for x in seqs], IGNORE, width=inputs.shape[1])  # i predicts i + 1
        return {"input_ids": inputs, "labels": labels, "index": torch.tensor([int(s["index"]) for s in samples])}


class FIMDataModule(ShardDataModule):
    """``ShardDataModule`` (an ``fm-prep code`` directory) with FIM / left-to-right collation; the
    rates come from the task's config (``conf/task/code_completion.yaml``)."""

    def __init__(self, tokenizer: FIMTokenizer, dir: str, *, fim_rate: float, spm_rate: float, **kwargs: Any):
        super().__init__(tokenizer, dir, masking=None, **kwargs)  # FIM windows, not masking: see collator()
        self.fim_rate, self.spm_rate = fim_rate, spm_rate

    def collator(self) -> FIMCollator:
        # batching, the per-epoch sample seeds and mid-epoch resume stay MLMDataModule's
        return FIMCollator(self.tokenizer, self.max_length, fim_rate=self.fim_rate, spm_rate=self.spm_rate)


__all__ = ["FIMCollator", "FIMDataModule"]
