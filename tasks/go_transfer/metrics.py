"""CAFA's protein-centric Fmax (Radivojac et al. 2013; Jiang et al. 2016), per ontology.

For a threshold ``t``, a protein's predicted terms are those scored ``>= t``. Precision is averaged
over the ``m(t)`` proteins with at least one predicted term, recall over all ``n`` benchmark
proteins (a protein without predictions has recall 0); ``F(t) = 2 p r / (p + r)`` and ``Fmax`` is
its maximum over the thresholds (CAFA: 0.01 to 1.00 in steps of 0.01). Coverage is ``m(t*) / n`` at
the best threshold. Both the truth and the predictions are propagated to the ancestors (and the
root removed) before scoring.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Prediction = dict[str, float]  # term -> score in [0, 1]


def cafa_thresholds(steps: int) -> np.ndarray:
    """``1/steps, 2/steps, ..., 1`` (CAFA: ``steps=100``)."""
    return np.arange(1, steps + 1, dtype=np.float64) / steps


def protein_curves(truth: Sequence[set[str]], predictions: Sequence[Prediction], thresholds: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per protein and threshold (n, T): its precision (0 where it predicts nothing), whether it
    predicts anything, its recall. Fmax and its bootstrap are sums of these rows."""
    if len(truth) != len(predictions):
        raise ValueError(f"{len(truth)} true annotation sets but {len(predictions)} predictions")
    if not truth:
        raise ValueError("Fmax of an empty benchmark")
    if any(not t for t in truth):
        raise ValueError("every benchmark protein needs at least one true term")
    thr = np.asarray(thresholds, dtype=np.float64) - 1e-9  # a score equal to a threshold counts
    n_pred = np.zeros((len(truth), len(thr)), np.int64)
    n_true_pos = np.zeros_like(n_pred)
    for k, (true, pred) in enumerate(zip(truth, predictions, strict=True)):
        if not pred:
            continue
        scores = np.fromiter(pred.values(), np.float64, len(pred))
        hit = np.fromiter((t in true for t in pred), bool, len(pred))
        order = np.argsort(scores)
        s, h = scores[order], hit[order]
        above = len(s) - np.searchsorted(s, thr, side="left")  # terms scored >= t
        hits_cum = np.concatenate([[0], np.cumsum(h[::-1])])  # hits among the top j terms
        n_pred[k], n_true_pos[k] = above, hits_cum[above]
    sizes = np.array([len(t) for t in truth], np.float64)[:, None]
    covered = n_pred > 0
    return np.where(covered, n_true_pos / np.maximum(n_pred, 1), 0.0), covered, n_true_pos / sizes


def _f_curves(precision_sum: np.ndarray, covered: np.ndarray, recall_sum: np.ndarray, n: np.ndarray) -> np.ndarray:
    """F(t) from sums over (possibly resampled) proteins; any leading batch shape."""
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(covered > 0, precision_sum / np.maximum(covered, 1), 0.0)
        recall = recall_sum / n
        return np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)


def fmax(truth: Sequence[set[str]], predictions: Sequence[Prediction], thresholds: np.ndarray) -> dict[str, float]:
    """Protein-centric Fmax of ``predictions`` against ``truth`` (one entry per benchmark protein,
    each with at least one true term): ``fmax``, its ``threshold``, ``coverage``, ``precision``,
    ``recall`` there; all 0 when nothing is predicted at any threshold."""
    prec, cov, rec = protein_curves(truth, predictions, thresholds)
    n = len(truth)
    m = cov.sum(0)
    f = _f_curves(prec.sum(0), m, rec.sum(0), np.float64(n))
    best = int(np.argmax(f))
    if f[best] <= 0:
        return {"fmax": 0.0, "threshold": float("nan"), "coverage": 0.0, "precision": 0.0, "recall": 0.0}
    return {"fmax": float(f[best]), "threshold": float(thresholds[best]), "coverage": float(m[best] / n),
            "precision": float(prec[:, best].sum() / m[best]), "recall": float(rec[:, best].mean())}


def bootstrap_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) how often each of ``n`` proteins is drawn in each bootstrap resample (n draws
    with replacement); the same seed gives every method the same resamples (a paired bootstrap)."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def resampled_fmax(truth: Sequence[set[str]], predictions: Sequence[Prediction], thresholds: np.ndarray,
                   counts: np.ndarray) -> tuple[float, np.ndarray]:
    """Fmax on the proteins as given and on each resample of ``counts`` (thresholds chosen anew in
    each, as CAFA's bootstrap does)."""
    prec, cov, rec = protein_curves(truth, predictions, thresholds)
    n = np.float64(len(truth))
    full = float(_f_curves(prec.sum(0), cov.sum(0), rec.sum(0), n).max())
    return full, _f_curves(counts @ prec, counts @ cov, counts @ rec, n).max(1)


def paired_difference(a: tuple[float, np.ndarray], b: tuple[float, np.ndarray]) -> dict[str, float]:
    """``diff`` of two ``resampled_fmax`` results and its 95% percentile interval (none without resamples)."""
    out = {"diff": a[0] - b[0]}
    if len(a[1]):
        d = a[1] - b[1]
        out.update(ci95_low=float(np.percentile(d, 2.5)), ci95_high=float(np.percentile(d, 97.5)))
    return out


def fmax_difference(truth: Sequence[set[str]], a: Sequence[Prediction], b: Sequence[Prediction],
                    thresholds: np.ndarray, resamples: int, seed: int) -> dict[str, float]:
    """Fmax of ``a`` minus Fmax of ``b`` on the same proteins, and its 95% percentile interval over
    ``resamples`` paired bootstrap resamples of the proteins; no interval for ``resamples=0``."""
    counts = bootstrap_counts(len(truth), resamples, seed)
    return paired_difference(resampled_fmax(truth, a, thresholds, counts), resampled_fmax(truth, b, thresholds, counts))


__all__ = ["Prediction", "bootstrap_counts", "cafa_thresholds", "fmax", "fmax_difference", "paired_difference",
           "protein_curves", "resampled_fmax"]
