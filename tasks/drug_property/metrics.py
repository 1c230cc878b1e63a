"""Property metrics (scikit-learn): ROC-AUC and PR-AUC for classification; RMSE, MAE, R^2 for
regression; and their mean and (population) std over seeds."""

from __future__ import annotations

from typing import Any

import numpy as np


def property_metrics(kind: str, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn import metrics as skm

    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if kind == "classification":
        if len(np.unique(y)) < 2:
            return {"roc_auc": float("nan"), "pr_auc": float("nan")}
        return {"roc_auc": float(skm.roc_auc_score(y, pred)), "pr_auc": float(skm.average_precision_score(y, pred))}
    return {"rmse": float(np.sqrt(skm.mean_squared_error(y, pred))), "mae": float(skm.mean_absolute_error(y, pred)),
            "r2": float(skm.r2_score(y, pred))}


def mean_std(per_seed: list[dict[str, float]], prefix: str) -> dict[str, float]:
    """``{prefix}{name}_mean`` and ``_std`` over the seeds' metric dicts."""
    out = {}
    for k in per_seed[0]:
        v = np.array([m[k] for m in per_seed], dtype=np.float64)
        out[f"{prefix}{k}_mean"], out[f"{prefix}{k}_std"] = float(v.mean()), float(v.std())
    return out


def target_metrics(targets: list[Any], y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """:func:`property_metrics` of every target ((n, T) labels, NaN = missing, masked out): the
    plain names for one target, ``<target>/<metric>`` for several."""
    out = {}
    for j, t in enumerate(targets):
        ok = np.isfinite(y[:, j])
        m = property_metrics(t.kind, y[ok, j], pred[ok, j]) if ok.sum() >= 2 else {}
        out.update({k if len(targets) == 1 else f"{t.name}/{k}": v for k, v in m.items()})
    return out
