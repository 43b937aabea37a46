"""Saturating power laws in the identity count, with bootstrap intervals.

    y(N) = E + A · N^(−α)

For an error metric (MSE, 1 − SSIM) A > 0 and E is the irreducible error at infinite N; for a
quality that rises with N (the identity gain) A < 0 and E is its ceiling. The least-squares fit is
scipy's `curve_fit` (bounded trust-region), started from a grid of exponents so a poor start does
not decide the answer. Intervals come from resampling the held-out identities and the seeds.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

ALPHA_BOUNDS = (1e-3, 4.0)


def power_law(n, e, a, alpha):
    return e + a * np.power(np.asarray(n, np.float64), -alpha)


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    e: float
    a: float
    alpha: float
    rmse: float

    def __call__(self, n):
        return power_law(n, self.e, self.a, self.alpha)


def fit_power_law(n: Sequence[float], y: Sequence[float], weights: Sequence[float] | None = None,
                  start: PowerLawFit | None = None) -> PowerLawFit:
    """Least-squares `y ≈ E + A·N^−α` (α in `ALPHA_BOUNDS`); `weights` = 1/σ per point; `start` a
    fit to start from (bootstrap resamples start from the fit of the means) instead of a grid of
    exponents. Needs at least 3 distinct N and finite values."""
    n, y = np.asarray(n, np.float64), np.asarray(y, np.float64)
    if n.shape != y.shape or n.ndim != 1:
        raise ValueError(f"fit_power_law: n and y must be 1-D of one length, got {n.shape} and {y.shape}")
    if len(np.unique(n)) < 3:
        raise ValueError(f"fit_power_law needs at least 3 distinct N, got {np.unique(n).tolist()}")
    if not (np.all(np.isfinite(y)) and np.all(n > 0)):
        raise ValueError("fit_power_law: N must be positive and y finite")
    sigma = None if weights is None else 1.0 / np.asarray(weights, np.float64)
    best = None
    starts = [(start.e, start.a, start.alpha)] if start is not None else []
    for alpha0 in (0.1, 0.3, 0.7, 1.5):
        # For a fixed α the model is linear in (E, A): start there.
        x = np.power(n, -alpha0)
        design = np.stack([np.ones_like(x), x], axis=1)
        (e0, a0), *_ = np.linalg.lstsq(design, y, rcond=None)
        starts.append((e0, a0, alpha0))
    for e0, a0, alpha0 in starts[:1] if start is not None else starts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                p, _ = curve_fit(power_law, n, y, p0=(e0, a0, alpha0), sigma=sigma, maxfev=20000,
                                 bounds=([-np.inf, -np.inf, ALPHA_BOUNDS[0]], [np.inf, np.inf, ALPHA_BOUNDS[1]]))
        except (RuntimeError, ValueError):
            continue
        rmse = float(np.sqrt(np.mean((power_law(n, *p) - y) ** 2)))
        if best is None or rmse < best.rmse:
            best = PowerLawFit(float(p[0]), float(p[1]), float(p[2]), rmse)
    if best is None:
        raise RuntimeError("fit_power_law: no start converged")
    return best


def bootstrap_fit(n: np.ndarray, samples: Sequence[np.ndarray], num_resamples: int = 1000, seed: int = 0,
                  level: float = 0.95) -> dict:
    """Fit and bootstrap intervals. `n` [P] identity counts; `samples[p]` the values of point p as
    an array [seeds_p, identities] (the same held-out identities, in the same order, at every
    point). Each resample draws the held-out identities with replacement (the same draw at every
    point: the identities are shared) and, per point, its seeds with replacement; the point means
    are refitted. Returns the fit of the means, percentile intervals of E, A, α, the point means
    and their intervals, and how many resamples failed to fit."""
    n = np.asarray(n, np.float64)
    samples = [np.asarray(s, np.float64) for s in samples]
    num_ids = {s.shape[1] for s in samples}
    if len(num_ids) != 1:
        raise ValueError(f"every point must have the same held-out identities, got counts {sorted(num_ids)}")
    (num_ids,) = num_ids
    means = np.array([np.nanmean(s) for s in samples])
    fit = fit_power_law(n, means)
    rng = np.random.default_rng(seed)
    params, point_means, failures = [], [], 0
    for _ in range(num_resamples):
        ids = rng.integers(0, num_ids, num_ids)
        resampled = np.array([np.nanmean(s[rng.integers(0, len(s), len(s))][:, ids]) for s in samples])
        point_means.append(resampled)
        try:
            f = fit_power_law(n, resampled, start=fit)
            params.append((f.e, f.a, f.alpha))
        except (RuntimeError, ValueError):
            failures += 1
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    params_arr = np.asarray(params) if params else np.full((1, 3), np.nan)
    point_means = np.asarray(point_means)
    interval = lambda a: [float(np.nanpercentile(a, lo)), float(np.nanpercentile(a, hi))]  # noqa: E731
    return {
        "e": fit.e, "a": fit.a, "alpha": fit.alpha, "rmse": fit.rmse,
        "e_ci": interval(params_arr[:, 0]), "a_ci": interval(params_arr[:, 1]), "alpha_ci": interval(params_arr[:, 2]),
        "n": n.tolist(), "means": means.tolist(),
        "means_ci": [interval(point_means[:, p]) for p in range(len(n))],
        "resamples": num_resamples, "failed_resamples": failures, "level": level,
        "bootstrap_params": params_arr,
    }


def extrapolation_check(n: np.ndarray, samples: Sequence[np.ndarray], num_resamples: int = 300, seed: int = 0) -> dict:
    """Fit without the largest N, predict it: the prediction (with its bootstrap interval), the
    measured mean and the error."""
    n = np.asarray(n, np.float64)
    last = int(np.argmax(n))
    keep = [i for i in range(len(n)) if i != last]
    result = bootstrap_fit(n[keep], [samples[i] for i in keep], num_resamples, seed)
    boot = result["bootstrap_params"]
    predictions = power_law(n[last], boot[:, 0], boot[:, 1], boot[:, 2])
    predicted = float(power_law(n[last], result["e"], result["a"], result["alpha"]))
    measured = float(np.nanmean(samples[last]))
    interval = [float(np.nanpercentile(predictions, 2.5)), float(np.nanpercentile(predictions, 97.5))]
    return {"held_out_n": float(n[last]), "predicted": predicted, "predicted_ci": interval, "measured": measured,
            "error": predicted - measured, "measured_inside_ci": bool(interval[0] <= measured <= interval[1])}


__all__ = ["ALPHA_BOUNDS", "PowerLawFit", "bootstrap_fit", "extrapolation_check", "fit_power_law", "power_law"]
