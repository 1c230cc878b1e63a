"""Structure metrics shared by the contact and secondary-structure tasks and ``fm-predict-structure``.

Contacts, as the ESM papers report them: for each chain of length L and each separation range
(short 6-11, medium 12-23, long >= 24 residues apart), rank the pairs i < j of that range by
predicted score and take the top L, L/2, L/5 (integer division, at least 1); precision is the
fraction of true contacts among the pairs taken (fewer pairs when the range holds fewer than k).
Chain precisions are averaged over the chains that have pairs in the range.

Secondary structure: Q3 / Q8 accuracy per residue (all test residues pooled; torchmetrics) and per
chain (mean of the chains' accuracies).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_accuracy

# name -> (min separation, max separation or None)
RANGES: dict[str, tuple[int, int | None]] = {"short": (6, 11), "medium": (12, 23), "long": (24, None)}
# metric suffix -> divisor of L
TOPS: dict[str, int] = {"P@L": 1, "P@L2": 2, "P@L5": 5}
MIN_SEPARATION = min(lo for lo, _ in RANGES.values())


def range_mask(length: int, lo: int, hi: int | None) -> np.ndarray:
    """(L, L) bool: upper-triangle pairs with lo <= j - i (<= hi)."""
    sep = np.arange(length)[None, :] - np.arange(length)[:, None]
    m = sep >= lo
    return m & (sep <= hi) if hi is not None else m


def contact_precisions(scores: np.ndarray, contacts: np.ndarray) -> dict[str, float]:
    """Precision at L, L/2, L/5 per separation range of one chain: ``{"long_P@L5": ..., ...}``;
    NaN for a range without pairs. ``scores`` (L, L) any real ranking score (only i < j is read),
    ``contacts`` (L, L) bool."""
    scores, contacts = np.asarray(scores), np.asarray(contacts, dtype=bool)
    length = scores.shape[0]
    if scores.shape != (length, length) or contacts.shape != scores.shape:
        raise ValueError(f"scores {scores.shape} and contacts {contacts.shape} must both be (L, L)")
    out = {}
    for name, (lo, hi) in RANGES.items():
        sel = range_mask(length, lo, hi)
        s, t = scores[sel], contacts[sel]
        order = np.argsort(-s, kind="stable")  # ties: row-major order (stable)
        for suffix, div in TOPS.items():
            top = order[: max(length // div, 1)]
            out[f"{name}_{suffix}"] = float(t[top].mean()) if len(top) else float("nan")
    return out


def mean_precisions(per_chain: Sequence[dict[str, float]]) -> dict[str, float]:
    """Average of ``contact_precisions`` over chains (chains without pairs in a range are skipped)."""
    if not per_chain:
        return {}
    keys = per_chain[0].keys()
    with np.errstate(all="ignore"):
        return {k: float(np.nanmean([c[k] for c in per_chain])) if any(np.isfinite(c[k]) for c in per_chain)
                else float("nan") for k in keys}


def separation_prior_scores(length: int, seed: int = 0) -> np.ndarray:
    """The sequence-separation prior: closer in sequence = more likely in contact (random tie-breaks)."""
    sep = np.abs(np.arange(length)[None, :] - np.arange(length)[:, None]).astype(np.float64)
    return -sep + 0.5 * np.random.default_rng(seed).random((length, length))


def random_scores(length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((length, length))


def accuracies(pred: Iterable[np.ndarray], true: Iterable[np.ndarray], num_classes: int) -> dict[str, float]:
    """Per-residue accuracy (torchmetrics, micro over every residue) and per-chain accuracy (mean of
    chains) of integer class arrays, one pair per chain."""
    pred, true = list(pred), list(true)
    if not pred:
        return {"per_residue": float("nan"), "per_chain": float("nan")}
    p = torch.as_tensor(np.concatenate(pred), dtype=torch.long)
    t = torch.as_tensor(np.concatenate(true), dtype=torch.long)
    per_residue = float(multiclass_accuracy(p, t, num_classes=num_classes, average="micro"))
    per_chain = float(np.mean([np.mean(a == b) for a, b in zip(pred, true, strict=True)]))
    return {"per_residue": per_residue, "per_chain": per_chain}


__all__ = ["MIN_SEPARATION", "RANGES", "TOPS", "accuracies", "contact_precisions", "mean_precisions",
           "random_scores", "range_mask", "separation_prior_scores"]
