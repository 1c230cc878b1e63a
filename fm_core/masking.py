"""BERT/ESM masked-language-model corruption.

Of the maskable (non-special, non-padding) tokens, ``mask_prob`` are selected; of those,
``mask_token_prob`` become ``<mask>``, ``random_token_prob`` become a random regular token and
the rest stay unchanged. The loss is taken on selected positions only (label ``IGNORE`` elsewhere).
Randomness comes from an explicit generator, so a sample's corruption depends only on its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE = -100


@dataclass(frozen=True)
class MaskingConfig:
    mask_prob: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.mask_prob <= 1:
            raise ValueError(f"mask_prob must be in (0, 1], got {self.mask_prob}")
        if self.mask_token_prob < 0 or self.random_token_prob < 0 or (
            self.mask_token_prob + self.random_token_prob > 1
        ):
            raise ValueError("mask_token_prob + random_token_prob must lie in [0, 1]")


def mask_tokens(
    tokens: Tensor,
    maskable: Tensor,
    *,
    mask_id: int,
    random_ids: Tensor,
    generator: torch.Generator,
    cfg: MaskingConfig = MaskingConfig(),
) -> tuple[Tensor, Tensor]:
    """tokens (L,) long, maskable (L,) bool -> (corrupted inputs (L,), labels (L,))."""
    u = torch.rand(tokens.shape, generator=generator)
    selected = maskable & (u < cfg.mask_prob)
    labels = torch.where(selected, tokens, torch.full_like(tokens, IGNORE))
    # a second uniform decides what happens to each selected position
    action = torch.rand(tokens.shape, generator=generator)
    to_mask = selected & (action < cfg.mask_token_prob)
    to_random = selected & (action >= cfg.mask_token_prob) & (
        action < cfg.mask_token_prob + cfg.random_token_prob
    )
    inputs = tokens.masked_fill(to_mask, mask_id)
    if to_random.any():
        pick = torch.randint(len(random_ids), tokens.shape, generator=generator)
        inputs = torch.where(to_random, random_ids[pick], inputs)
    return inputs, labels
