"""Per-molecule uncertainty of the regression targets, chosen by ``task.uncertainty._target_``.

Every method turns the ensemble members' outputs into a predictive mean and standard deviation and
a central interval of the stated ``coverage``:

- :class:`SeedEnsemble`: plain MLP heads; the spread of the seeds is the std, the interval is
  Gaussian (mean +- z sigma). Uncalibrated: the seeds' spread is far smaller than the error.
- :class:`DeepEnsemble`: mean-variance heads trained with the Gaussian NLL (Lakshminarayanan et al.
  2017); the std of the mixture: sqrt(mean of the members' variances + variance of their means).
- :class:`Recalibrated`: another method's std scaled per target by the factor that makes the
  validation split's standardised errors unit variance (Levi et al. 2019), Gaussian interval.
- :class:`Conformal`: split-conformal intervals on the validation split (normalised by another
  method's std when ``normalized``): the ceil((n+1) coverage)/n quantile q of |y - mean| / sigma
  on validation gives mean +- q sigma, with marginal coverage >= ``coverage`` for exchangeable data.

Test-split metrics (:func:`uncertainty_metrics`): coverage of the intervals, mean width, the
miscalibration area of the Gaussian predictive distribution (mean |observed - expected| fraction of
central intervals over expected levels 1%..99%) and Spearman(std, |error|).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import norm, spearmanr


class Uncertainty:
    """The common base: ``mean_variance`` says whether the heads predict a variance."""

    mean_variance = False

    def __init__(self, *, coverage: float):
        if not 0 < coverage < 1:
            raise ValueError(f"task.uncertainty.coverage must be in (0, 1), got {coverage}")
        self.coverage = coverage

    def combine(self, means: np.ndarray, variances: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(members, n, T) -> predictive mean and std (n, T)."""
        return means.mean(0), means.std(0)

    def calibrate(self, mean: np.ndarray, std: np.ndarray, y: np.ndarray) -> None:
        """Fit on the validation split (n, T); NaN labels are ignored."""

    def interval(self, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(std after calibration, lower, upper) of the central ``coverage`` interval."""
        half = norm.ppf(0.5 + self.coverage / 2) * std
        return std, mean - half, mean + half

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


class SeedEnsemble(Uncertainty):
    pass


class DeepEnsemble(Uncertainty):
    mean_variance = True

    def combine(self, means: np.ndarray, variances: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return means.mean(0), np.sqrt(variances.mean(0) + means.var(0))


class _Wrapped(Uncertainty):
    """A calibration on top of another method (``base``), which gives mean and std."""

    def __init__(self, *, base: Uncertainty, coverage: float):
        super().__init__(coverage=coverage)
        self.base = base
        self.mean_variance = base.mean_variance
        self.scale: np.ndarray | None = None  # per target

    def combine(self, means: np.ndarray, variances: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return self.base.combine(means, variances)

    def state(self) -> dict[str, Any]:
        return {"scale": None if self.scale is None else self.scale.tolist()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.scale = None if state["scale"] is None else np.asarray(state["scale"], dtype=np.float64)


class Recalibrated(_Wrapped):
    def calibrate(self, mean: np.ndarray, std: np.ndarray, y: np.ndarray) -> None:
        z2 = np.square((y - mean) / np.maximum(std, 1e-12))
        self.scale = np.sqrt(np.array([np.nanmean(c) if np.isfinite(c).any() else 1.0 for c in z2.T]))

    def interval(self, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return super().interval(mean, std * self.scale)


class Conformal(_Wrapped):
    def __init__(self, *, base: Uncertainty, coverage: float, normalized: bool):
        super().__init__(base=base, coverage=coverage)
        self.normalized = normalized

    def _sigma(self, std: np.ndarray) -> np.ndarray:
        return np.maximum(std, 1e-12) if self.normalized else np.ones_like(std)

    def calibrate(self, mean: np.ndarray, std: np.ndarray, y: np.ndarray) -> None:
        scores = np.abs(y - mean) / self._sigma(std)
        self.scale = np.array([conformal_quantile(c[np.isfinite(c)], self.coverage) for c in scores.T])

    def interval(self, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        half = self.scale * self._sigma(std)
        # the std of the Gaussian whose central interval is this one (for the miscalibration area)
        return half / norm.ppf(0.5 + self.coverage / 2), mean - half, mean + half


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The ceil((n+1) coverage)-th smallest score (inf when n is too small for that coverage)."""
    n = len(scores)
    k = int(np.ceil((n + 1) * coverage))
    return float(np.sort(scores)[k - 1]) if 0 < k <= n else float("inf")


def miscalibration_area(y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> float:
    levels = np.linspace(0.01, 0.99, 99)
    z = np.abs(y - mean) / np.maximum(std, 1e-12)
    observed = (z[None, :] <= norm.ppf(0.5 + levels / 2)[:, None]).mean(1)
    return float(np.abs(observed - levels).mean())


def uncertainty_metrics(y: np.ndarray, mean: np.ndarray, std: np.ndarray, calibrated: np.ndarray, lo: np.ndarray,
                        hi: np.ndarray, coverage: float) -> dict[str, float]:
    """One regression target's test metrics (labelled molecules only): ``std`` before calibration
    ranks the molecules (Spearman with |error|), ``calibrated`` is the predictive std after it."""
    ok = np.isfinite(y)
    y, mean, std, calibrated, lo, hi = y[ok], mean[ok], std[ok], calibrated[ok], lo[ok], hi[ok]
    err = np.abs(y - mean)
    rho = float(spearmanr(std, err).statistic) if len(y) > 2 and np.ptp(std) > 0 else float("nan")
    return {f"coverage_{round(coverage * 100)}": float(((y >= lo) & (y <= hi)).mean()),
            "interval_width_mean": float((hi - lo).mean()), "uncertainty_mean": float(std.mean()),
            "calibrated_std_mean": float(calibrated.mean()),
            "miscalibration_area": miscalibration_area(y, mean, calibrated), "uncertainty_error_spearman": rho}
