"""The one padding helper: ragged token rows -> a (B, L) batch (no Lightning, no data pipeline)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def pad_batch(rows: Sequence[Any], pad_id: int, *, width: int | None = None, left: bool = False) -> torch.Tensor:
    """Ragged 1-D rows (token lists, numpy arrays or tensors) -> a (B, width) long tensor filled with
    ``pad_id`` (``width``: the longest row by default); rows are right-aligned with ``left=True``."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, L)
    for i, r in enumerate(rows):
        t = r if isinstance(r, torch.Tensor) else torch.from_numpy(np.asarray(r, dtype=np.int64))
        if left:
            out[i, width - len(t):] = t
        else:
            out[i, : len(t)] = t
    return out
