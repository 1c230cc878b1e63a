"""BERT/ESM masked-language-model corruption.

Of the maskable (non-special, non-padding) tokens, ``mask_prob`` are selected; of those,
``mask_token_prob`` become ``<mask>``, ``random_token_prob`` become a random regular token and
the rest stay unchanged. The loss is taken on selected positions only (label ``IGNORE`` elsewhere).
Randomness comes from an explicit generator, so a sample's corruption depends only on its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE = -100


@dataclass(frozen=True)
class MaskingConfig:
    """Token-level BERT masking. No defaults here: the data config (``conf/data/*.yaml``) is the one
    home of the numbers (ESM-2 and BERT use 0.15 / 0.8 / 0.1)."""

    mask_prob: float
    mask_token_prob: float
    random_token_prob: float

    def __post_init__(self) -> None:
        if not 0 < self.mask_prob <= 1:
            raise ValueError(f"mask_prob must be in (0, 1], got {self.mask_prob}")
        if self.mask_token_prob < 0 or self.random_token_prob < 0 or (
            self.mask_token_prob + self.random_token_prob > 1
        ):
            raise ValueError("mask_token_prob + random_token_prob must lie in [0, 1]")

    # A masking strategy is any object with ``for_tokenizer(tokenizer) -> strategy``,
    # ``__call__(tokens, maskable, *, mask_id, random_ids, generator) -> (inputs, labels)`` and
    # ``expected_mask_fraction``; the data config picks one by ``_target_`` (a plain dict keeps
    # meaning this token-level one).
    def for_tokenizer(self, tokenizer) -> MaskingConfig:
        return self

    @property
    def expected_mask_fraction(self) -> float:
        """Expected share of maskable tokens replaced by ``<mask>``: the ratio the model's token
        dropout assumes at training time (``EncoderConfig.mask_ratio_train``)."""
        return self.mask_prob * self.mask_token_prob

    def __call__(self, tokens: Tensor, maskable: Tensor, *, mask_id: int, random_ids: Tensor,
                 generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return mask_tokens(tokens, maskable, mask_id=mask_id, random_ids=random_ids, generator=generator, cfg=self)


def mask_tokens(
    tokens: Tensor,
    maskable: Tensor,
    *,
    mask_id: int,
    random_ids: Tensor,
    generator: torch.Generator,
    cfg: MaskingConfig,
) -> tuple[Tensor, Tensor]:
    """tokens (L,) long, maskable (L,) bool -> (corrupted inputs (L,), labels (L,))."""
    u = torch.rand(tokens.shape, generator=generator)
    selected = maskable & (u < cfg.mask_prob)
    # a second uniform (inside) decides what happens to each selected position
    return _bert_corrupt(tokens, selected, mask_id=mask_id, random_ids=random_ids, generator=generator,
                         mask_token_prob=cfg.mask_token_prob, random_token_prob=cfg.random_token_prob)


def _bert_corrupt(tokens: Tensor, selected: Tensor, *, mask_id: int, random_ids: Tensor,
                  generator: torch.Generator, mask_token_prob: float, random_token_prob: float
                  ) -> tuple[Tensor, Tensor]:
    """Selected positions -> (inputs, labels) with the 80/10/10 rule (shared by every strategy)."""
    labels = torch.where(selected, tokens, torch.full_like(tokens, IGNORE))
    action = torch.rand(tokens.shape, generator=generator)
    to_mask = selected & (action < mask_token_prob)
    to_random = selected & (action >= mask_token_prob) & (action < mask_token_prob + random_token_prob)
    inputs = tokens.masked_fill(to_mask, mask_id)
    if to_random.any():
        pick = torch.randint(len(random_ids), tokens.shape, generator=generator)
        inputs = torch.where(to_random, random_ids[pick], inputs)
    return inputs, labels


class SpanMasking:
    """Contiguous-span corruption (SpanBERT): spans with geometric lengths (mean ``mean_span``,
    at most ``max_span``) are selected until ``mask_prob`` of the maskable tokens are covered;
    selected tokens then follow the 80/10/10 rule. With ``whole_words`` every span grows to whole
    identifiers: a token that starts with a word character and follows a token that ends with one
    continues the same identifier (byte-level BPE splits ``max_length`` into ``max`` + ``_length``),
    so a model never sees half of a name it must predict. Suited to code, where single-token
    masking is mostly solved by copying the rest of an identifier.
    """

    def __init__(self, *, mask_prob: float, mean_span: float, max_span: int, whole_words: bool,
                 mask_token_prob: float, random_token_prob: float):
        MaskingConfig(mask_prob, mask_token_prob, random_token_prob)  # validates the shared fields
        if mean_span < 1 or max_span < 1:
            raise ValueError(f"mean_span ({mean_span}) and max_span ({max_span}) must be >= 1")
        self.mask_prob, self.mean_span, self.max_span, self.whole_words = mask_prob, mean_span, max_span, whole_words
        self.mask_token_prob, self.random_token_prob = mask_token_prob, random_token_prob
        self.starts_word: Tensor | None = None  # (V,) token begins with a word character
        self.ends_word: Tensor | None = None  # (V,) token ends with a word character

    def for_tokenizer(self, tokenizer) -> SpanMasking:
        if self.whole_words and self.starts_word is None:
            texts = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
            special = set(int(i) for i in tokenizer.special_ids)
            word = [(t[:1].isalnum() or t[:1] == "_", t[-1:].isalnum() or t[-1:] == "_") for t in texts]
            self.starts_word = torch.tensor([w[0] and i not in special for i, w in enumerate(word)])
            self.ends_word = torch.tensor([w[1] and i not in special for i, w in enumerate(word)])
        return self

    @property
    def expected_mask_fraction(self) -> float:
        """Expected share of maskable tokens replaced by ``<mask>``: spans cover ``mask_prob`` of
        them (the budget), ``mask_token_prob`` of those become ``<mask>``."""
        return self.mask_prob * self.mask_token_prob

    def word_ids(self, tokens: Tensor) -> Tensor:
        """(L,) -> (L,) index of the identifier (word) each token belongs to."""
        if not self.whole_words:
            return torch.arange(len(tokens))
        if self.starts_word is None:
            raise RuntimeError("SpanMasking(whole_words=True) needs for_tokenizer(tokenizer) first")
        cont = torch.zeros(len(tokens), dtype=torch.bool)
        cont[1:] = self.starts_word[tokens[1:]] & self.ends_word[tokens[:-1]]
        return torch.cumsum(~cont, 0) - 1

    def __call__(self, tokens: Tensor, maskable: Tensor, *, mask_id: int, random_ids: Tensor,
                 generator: torch.Generator) -> tuple[Tensor, Tensor]:
        words = self.word_ids(tokens)
        n_words = int(words[-1]) + 1 if len(words) else 0
        # a word is a candidate when all its tokens are maskable
        word_ok = torch.bincount(words, weights=(~maskable).float(), minlength=n_words).eq(0)
        candidates = torch.nonzero(word_ok).flatten()
        budget = round(self.mask_prob * int(maskable.sum()))
        chosen = torch.zeros(n_words, dtype=torch.bool)
        sizes = torch.bincount(words, minlength=n_words)
        covered, p = 0, 1.0 / self.mean_span
        while covered < budget and len(candidates):
            # span length in words: geometric with mean ``mean_span``, capped
            u = float(torch.rand((), generator=generator))
            length = min(self.max_span, 1 + int(math.log(max(1.0 - u, 1e-12)) / math.log(1.0 - p)) if p < 1 else 1)
            start = int(candidates[int(torch.randint(len(candidates), (), generator=generator))])
            span = torch.arange(start, min(start + length, n_words))
            span = span[word_ok[span]]
            new = span[~chosen[span]]
            chosen[new] = True
            covered += int(sizes[new].sum())
            if bool(chosen[candidates].all()):
                break
        selected = chosen[words] & maskable if n_words else torch.zeros_like(maskable)
        return _bert_corrupt(tokens, selected, mask_id=mask_id, random_ids=random_ids, generator=generator,
                             mask_token_prob=self.mask_token_prob, random_token_prob=self.random_token_prob)
