"""Token n-gram baseline: stupid backoff (Brants et al. 2007) over BPE token ids, counted with numpy.

Why not a library: ``nltk.lm`` keeps every n-gram in nested Python dicts and scores candidates one
by one in Python (minutes per thousand completions on 2.4M tokens), and KenLM needs a C++ build
and its binary tools. Here an n-gram is one int64 key (``bits`` per token), counted by
``np.unique``; the continuations of a context are one ``searchsorted`` range of the sorted keys.

Score of token ``w`` after context ``c`` (orders high to low): ``count(c w) / count(c)`` at the
longest context where ``c w`` was seen, times ``backoff`` per order dropped; unigram at the bottom.
It implements ``fm_core.decoding.NextTokenModel`` so the same decoding loop drives it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


class NgramLM:
    def __init__(self, vocab_size: int, order: int = 4, backoff: float = 0.4):
        self.bits = max(1, int(np.ceil(np.log2(vocab_size))))
        if order < 1 or self.bits * order > 63:
            raise ValueError(f"order {order} x {self.bits} bits per token does not fit an int64 key")
        self.vocab_size, self.order, self.backoff = vocab_size, order, backoff
        self.keys: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []

    def fit(self, sequences: Iterable[np.ndarray], boundary: int) -> NgramLM:
        """Count n-grams of every order in ``sequences`` (each preceded by the ``boundary`` token)."""
        stream = np.concatenate([np.concatenate(([boundary], np.asarray(s, dtype=np.int64))) for s in sequences])
        self.keys, self.counts = [], []
        for n in range(1, self.order + 1):
            key = np.zeros(len(stream) - n + 1, dtype=np.int64)
            for j in range(n):
                key = (key << self.bits) | stream[j : len(stream) - n + 1 + j]
            k, c = np.unique(key, return_counts=True)
            self.keys.append(k)
            self.counts.append(c)
        uni = np.zeros(self.vocab_size)
        uni[self.keys[0]] = self.counts[0]
        self.unigram = (uni + 1e-3) / (uni + 1e-3).sum()
        return self

    def scores(self, context: Sequence[int]) -> np.ndarray:
        """(V,) stupid-backoff scores of the next token."""
        s = self.unigram * self.backoff ** (self.order - 1)
        mask = (1 << self.bits) - 1
        for n in range(2, self.order + 1):
            if len(context) < n - 1:
                break
            ctx = 0
            for t in context[len(context) - (n - 1):]:
                ctx = (ctx << self.bits) | int(t)
            keys = self.keys[n - 1]
            lo, hi = np.searchsorted(keys, [ctx << self.bits, (ctx + 1) << self.bits])
            if hi > lo:
                c = self.counts[n - 1][lo:hi]
                s[keys[lo:hi] & mask] = self.backoff ** (self.order - n) * c / c.sum()
        return s

    # NextTokenModel
    def _batch(self) -> Tensor:
        return torch.log(torch.as_tensor(np.stack([self.scores(c) for c in self.contexts]), dtype=torch.float32))

    def start(self, prompts: list[Sequence[int]]) -> Tensor:
        self.contexts = [list(p)[-(self.order - 1):] if self.order > 1 else [] for p in prompts]
        return self._batch()

    def step(self, tokens: Tensor) -> Tensor:
        keep = self.order - 1
        self.contexts = [(c + [int(t)])[-keep:] if keep else [] for c, t in zip(self.contexts, tokens.tolist(), strict=True)]
        return self._batch()

    def line_logprobs(self, completer: Any, prompts: Sequence[Any], lines: Sequence[str]) -> list[tuple[float, int]]:
        """``log p(line, end of line | prompt)`` and the line's token count (as
        ``retrieval.line_logprobs`` for a neural model): each step's scores normalised to a
        distribution; the end of line is the mass of tokens that start with a newline."""
        newline = np.array([t.startswith("\n") for t in completer.texts])
        out = []
        for p, line in zip(prompts, lines, strict=True):
            ids = list(map(int, completer.tok.encode(p.healed + line))) if p.healed + line else []
            context, total = list(p.ids), 0.0
            for t in ids:
                s = self.scores(context)
                total += float(np.log(s[t] / s.sum()))
                context.append(t)
            s = self.scores(context)
            out.append((total + float(np.log(s[newline].sum() / s.sum())), len(ids)))
        return out
