"""Empirical convergence rates: power-law slopes of errors on n, with bootstrap CIs (the paper's
log-log plots with fitted slopes, Section 4)."""

import warnings

import numpy as np


def _nanmedian(a, axis):
    with warnings.catch_warnings():  # a size whose fits all failed: NaN, as nanmean gives
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(a, axis=axis)


STATISTICS = {"mean": np.nanmean, "median": _nanmedian}


def fit_power_law(ns, mean_errors):
    """Least-squares line through (log n, log mean error): returns (slope, intercept)."""
    slope, intercept = np.polyfit(np.log(np.asarray(ns, float)), np.log(np.asarray(mean_errors, float)), 1)
    return float(slope), float(intercept)


def bootstrap_slope(ns, errors, n_boot: int = 2000, seed: int = 0, level: float = 0.95, statistic: str = "mean"):
    """Slope of log(statistic of the errors) on log n with a percentile bootstrap CI over replications.

    errors (S, R): S sample sizes by R replications (NaN for failed fits, ignored); ``statistic``
    'mean' or 'median' over the replications of a size. Resamples replication indices with
    replacement, the same draw for every sample size. Returns dict(slope, ci_low, ci_high, intercept)."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    center = STATISTICS[statistic]
    errors = np.asarray(errors, float)
    slope, intercept = fit_power_law(ns, center(errors, axis=1))
    rng = np.random.default_rng(seed)
    R = errors.shape[1]
    idx = rng.integers(0, R, size=(n_boot, R))
    boot = center(errors[:, idx], axis=2)  # (S, n_boot)
    logn = np.log(np.asarray(ns, float))
    usable = np.isfinite(np.log(boot)).all(axis=0)  # a draw of only failed fits at some n has no slope
    boots = np.polyfit(logn, np.log(boot[:, usable]), 1)[0] if usable.any() else np.array([np.nan])
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return {"slope": slope, "ci_low": float(lo), "ci_high": float(hi), "intercept": intercept}


def window_slope(sizes, errors, lo: float = 0, hi: float = np.inf, min_sizes: int = 3, **bootstrap) -> dict | None:
    """``bootstrap_slope`` over the sizes in [lo, hi] (0.1% slack at each end, so a log-spaced size
    rounded to an integer stays in): sizes (S,), errors (S, R). None when fewer than ``min_sizes``
    sizes are in the window or none of their errors is finite; else bootstrap_slope's dict plus
    'sizes', the number of sizes used."""
    sizes, errors = np.asarray(sizes), np.asarray(errors, float)
    keep = (sizes >= lo * 0.999) & (sizes <= hi * 1.001)
    if keep.sum() < min_sizes or not np.isfinite(errors[keep]).any():
        return None
    return {**bootstrap_slope(sizes[keep], errors[keep], **bootstrap), "sizes": int(keep.sum())}
