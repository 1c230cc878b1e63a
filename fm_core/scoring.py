"""Masked marginals of a masked LM: log p(token at i | sequence with i masked), the quantity behind
pseudo-perplexity and ESM-style variant-effect scores (Meier et al. 2021, "masked marginals").

Each masked copy is one sample; copies are batched under a token budget (same length per sequence,
so batches carry no padding within a sequence) and only the masked position goes through the LM
head. A sequence longer than the context is scored in the window of ``max_length`` tokens that
puts the masked residue nearest its centre.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from fm_core.batching import TokenBudgetBatchSampler
from fm_core.model import MaskedLM
from fm_core.padding import pad_batch
from fm_core.tokenizer import Tokenizer


def centred_window(position: int, n: int, width: int) -> tuple[int, int]:
    """[start, end) of at most ``width`` residues of ``n`` with ``position`` as central as possible."""
    if n <= width:
        return 0, n
    start = min(max(position - width // 2, 0), n - width)
    return start, start + width


class MaskedMarginals:
    def __init__(self, net: MaskedLM, tokenizer: Tokenizer, *, max_tokens: int = 16384,
                 max_length: int | None = None, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        self.tok = tokenizer
        probe_id = int(tokenizer.random_ids[0])
        probe = tokenizer.add_special_tokens(np.array([probe_id], dtype=np.int64))
        self.prefix = int(np.flatnonzero(probe == probe_id)[0])
        self.n_special = tokenizer.num_special_added
        self.max_length = int(max_length or net.config.max_length)
        self.width = self.max_length - self.n_special
        if max_tokens < self.max_length:
            raise ValueError(f"max_tokens {max_tokens} is below max_length {self.max_length}")
        self.max_tokens = max_tokens
        self.device = torch.device(device)
        self.net = net.eval().to(self.device, dtype)

    @torch.inference_mode()
    def __call__(self, sequences: Sequence[np.ndarray], positions: Sequence[np.ndarray] | None = None,
                 on_batch: Callable[[int], None] | None = None) -> list[np.ndarray]:
        """Per sequence, (n, V) float32 log-probabilities: row i is the model's distribution at
        residue i (0-based) with residue i masked. Rows not in ``positions`` (when given) are NaN."""
        wanted = [np.arange(len(s)) if positions is None else np.unique(np.asarray(positions[k], dtype=np.int64))
                  for k, s in enumerate(sequences)]
        samples = [(k, int(i), *centred_window(int(i), len(s), self.width))
                   for k, s in enumerate(sequences) for i in wanted[k]]
        out = [np.full((len(s), self.tok.vocab_size), np.nan, dtype=np.float32) for s in sequences]
        if not samples:
            return out
        lengths = np.array([e - s + self.n_special for _, _, s, e in samples], dtype=np.int64)
        for batch in TokenBudgetBatchSampler(lengths, self.max_tokens, shuffle=False):
            idx = [i for i, _ in batch]
            cols = np.empty(len(idx), dtype=np.int64)
            rows_ids = []
            for row, i in enumerate(idx):
                k, pos, start, end = samples[i]
                ids = self.tok.add_special_tokens(sequences[k][start:end])
                cols[row] = self.prefix + pos - start
                ids[cols[row]] = self.tok.mask_id
                rows_ids.append(ids)
            t = pad_batch(rows_ids, self.tok.pad_id).to(self.device)  # (B, L)
            hidden = self.net.encoder(t)["hidden"]  # (B, L, D)
            rows = torch.arange(len(idx), device=self.device)
            logits = self.net.mlm_logits(hidden[rows, torch.from_numpy(cols).to(self.device)])  # (B, V)
            logp = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
            for row, i in enumerate(idx):
                k, pos, _, _ = samples[i]
                out[k][pos] = logp[row]
            if on_batch is not None:
                on_batch(len(idx))
        return out


def pseudo_log_likelihood(logp: np.ndarray, ids: np.ndarray) -> float:
    """Sum over residues of log p(true residue | residue masked)."""
    return float(logp[np.arange(len(ids)), ids.astype(np.int64)].sum())
