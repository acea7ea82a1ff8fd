"""P-values of a Monte Carlo test whose statistic has several parts (the contamination test: the
fitted prompt's LR and the broad-prompt LR), combined by their smallest p-value (min-p).

Every value sits in a pool with the reference draws: a part's p-value is the share of the pool at
or above it (itself counted), the combined statistic is the smallest of its parts' p-values, and the
test's p-value is the share of the pool whose combined statistic is at least as extreme as the
observed one (itself counted). Ties in the smallest p-value are common (the largest values of the
parts all have the smallest p-value, 1 / (B + 1)), and counting them all against the observed value
makes the test conservative at small B (at B = 99 it could never reject at 0.01); they are broken
by the next smallest p-value, then the next (each row's p-values sorted, compared
lexicographically). The combined statistic stays a symmetric function of the pool, so when the
observed statistic and the draws are exchangeable under H0 the test is exact (the min-p idea of
Westfall & Young, 1993, by ranks within one pool). With one part it is the plain bootstrap p-value
(1 + #{T*_b >= T}) / (B + 1)."""

import numpy as np


def pooled_pvalues(observed, pool) -> np.ndarray:
    """The min-p test's p-value of each observed row against the reference draws ``pool``, each row
    pooled with the draws: observed (R, J), pool (B, J) -> (R,) in [1 / (B + 1), 1]. A value of +inf
    (a draw counted high) is the most extreme in every part; nan is not allowed."""
    obs, ref = _as_parts(observed), _as_parts(pool)
    if obs.shape[1] != ref.shape[1]:
        raise ValueError(f"observed has {obs.shape[1]} parts and the pool {ref.shape[1]}")
    if np.isnan(obs).any() or np.isnan(ref).any():
        raise ValueError("statistics must not be nan: count a failed draw as +inf")
    B, J = ref.shape
    sorted_ref = np.sort(ref, axis=0)
    # a draw's count of pool values at or above it, in each part, before the observed row joins
    within = np.stack([B - np.searchsorted(sorted_ref[:, j], ref[:, j]) for j in range(J)], 1)
    out = np.empty(obs.shape[0])
    for r, row in enumerate(obs):
        own = np.sort([B - np.searchsorted(sorted_ref[:, j], row[j]) + 1 for j in range(J)])  # itself counted
        draws = np.sort(within + (row >= ref), axis=1)  # the observed row in the pool
        out[r] = (1 + int(_at_most(draws, own).sum())) / (B + 1)
    return out


def _at_most(rows: np.ndarray, own: np.ndarray) -> np.ndarray:
    """(B,) bool: each row of sorted counts (B, J) lexicographically at most ``own`` (J,)."""
    result = np.ones(rows.shape[0], dtype=bool)  # equal in every part: at most
    for j in reversed(range(rows.shape[1])):
        result = (rows[:, j] < own[j]) | ((rows[:, j] == own[j]) & result)
    return result


def _as_parts(values) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return a[:, None] if a.ndim == 1 else a
