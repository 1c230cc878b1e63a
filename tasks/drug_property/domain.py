"""Applicability domain by retrieval: the nearest training molecules by Tanimoto similarity of
Morgan bit fingerprints (exact search: bit vectors as 0/1 float32 matrices, intersections by a
matrix product, exact up to 2^24 bits; Tanimoto is not a cosine or inner product, so
``fm_core.index`` does not serve it), an in-domain flag whose similarity threshold is chosen on the
task's calibration set, and metrics by similarity band.

``task.domain`` (conf/task/drug_property.yaml) holds the settings; the scorer stores the training
fingerprints (packed bits) and ids, so ``fm-score`` reports the neighbours of every molecule.
Threshold rule, on the task's calibration set (validation, plus out-of-fold training molecules
with their similarity to the other folds): among the candidate ``thresholds`` that leave at least
``min_count`` molecules and a ``min_fraction`` of them on each side, the one where the molecules
below it have the largest mean loss relative to those at or above it (squared error, or the log
loss for classification); ties go to the lower threshold; no candidate -> the lowest (everything
in domain). Without the fraction a threshold that leaves a handful of molecules in domain wins
on noise (0.7 on solubility's validation split: 2 of 127 test molecules in domain).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Domain:
    def __init__(self, *, radius: int, size: int, k: int, thresholds: list[float], min_count: int,
                 min_fraction: float, bands: list[float]):
        if not 0 <= min_fraction < 0.5:
            raise ValueError(f"task.domain.min_fraction must be in [0, 0.5), got {min_fraction}")
        self.radius, self.size, self.k = radius, size, k
        self.thresholds, self.min_count, self.bands = list(thresholds), min_count, list(bands)
        self.min_fraction = min_fraction
        self.train_bits: np.ndarray | None = None  # (N, size) uint8 0/1
        self.ids: list[str] = []
        self.threshold = float(min(self.thresholds))

    def fingerprints(self, mols: list[Any]) -> np.ndarray:
        from rdkit.Chem import rdFingerprintGenerator

        gen = rdFingerprintGenerator.GetMorganGenerator(radius=self.radius, fpSize=self.size)
        out = np.zeros((len(mols), self.size), dtype=np.uint8)
        for i, m in enumerate(mols):
            out[i] = gen.GetFingerprintAsNumPy(m)
        return out

    def fit(self, mols: list[Any], ids: list[str]) -> Domain:
        self.train_bits, self.ids = self.fingerprints(mols), [str(i) for i in ids]
        return self

    def neighbours(self, mols: list[Any]) -> tuple[np.ndarray, list[list[str]]]:
        """(similarities (n, k) descending, ids) of the k nearest training molecules."""
        sims, idx = tanimoto_top_k(self.fingerprints(mols), self.train_bits, min(self.k, len(self.ids)))
        return sims, [[self.ids[j] for j in row] for row in idx]

    def choose_threshold(self, nearest: np.ndarray, loss: np.ndarray) -> float:
        best, best_ratio = float(min(self.thresholds)), -np.inf
        ok = np.isfinite(loss)
        nearest, loss = nearest[ok], loss[ok]
        floor = max(self.min_count, self.min_fraction * len(loss))
        for t in sorted(self.thresholds):
            inside, outside = loss[nearest >= t], loss[nearest < t]
            if min(len(inside), len(outside)) < floor:
                continue
            ratio = outside.mean() / max(inside.mean(), 1e-12)
            if ratio > best_ratio:
                best, best_ratio = float(t), ratio
        self.threshold = best
        return best

    def band_names(self) -> list[str]:
        edges = [0.0, *self.bands, 1.0]
        return [f"{lo:g}-{hi:g}" if hi < 1.0 else f"ge{lo:g}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]

    def band_of(self, nearest: np.ndarray) -> np.ndarray:
        return np.digitize(nearest, self.bands)  # 0: < bands[0], ...

    def state(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "ids": self.ids}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"train_bits": np.packbits(self.train_bits, axis=1)}

    def load(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.threshold, self.ids = float(state["threshold"]), list(state["ids"])
        self.train_bits = np.unpackbits(arrays["train_bits"], axis=1)[:, : self.size]


def tanimoto_top_k(queries: np.ndarray, train: np.ndarray, k: int,
                   chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact Tanimoto top-k of 0/1 bit matrices: (similarities (Q, k) descending, indices);
    ties broken by the lower training index. Two empty fingerprints have similarity 0."""
    t = train.astype(np.float32)
    t_count = t.sum(1, dtype=np.float64)
    sims_out = np.zeros((len(queries), k), dtype=np.float64)
    idx_out = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk].astype(np.float32)
        inter = (q @ t.T).astype(np.float64)  # integer counts, exact in float32
        union = q.sum(1, dtype=np.float64)[:, None] + t_count[None, :] - inter
        sim = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        idx_out[start : start + chunk] = order
        sims_out[start : start + chunk] = np.take_along_axis(sim, order, axis=1)
    return sims_out, idx_out
