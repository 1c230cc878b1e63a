"""Learning-rate schedules, chosen in config with ``_partial_`` (the optimizer is bound later)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupDecay:
    """Multiplier on the peak learning rate: linear warm-up, then linear/cosine decay to
    ``final_ratio`` at ``total_steps`` (ESM-2: 2k warm-up steps, linear decay to 10%)."""

    def __init__(self, warmup_steps: int, total_steps: int, decay: str = "linear", final_ratio: float = 0.1):
        if decay not in ("linear", "cosine", "constant"):
            raise ValueError(f"decay must be linear, cosine or constant, got {decay!r}")
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive (set trainer.max_steps), got {total_steps}")
        self.warmup_steps, self.total_steps = max(0, warmup_steps), total_steps
        self.decay, self.final_ratio = decay, final_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        if self.decay == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final_ratio + (1.0 - self.final_ratio) * shape


def warmup_decay(optimizer: Optimizer, warmup_steps: int, total_steps: int, decay: str = "linear",
                 final_ratio: float = 0.1) -> LambdaLR:
    return LambdaLR(optimizer, WarmupDecay(warmup_steps, total_steps, decay, final_ratio))
