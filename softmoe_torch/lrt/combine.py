"""P-values of a Monte Carlo test whose statistic has several parts (the contamination test: the
fitted prompt's LR and the broad-prompt LR), combined by their smallest p-value (min-p).

Every value sits in a pool with the reference draws: a part's p-value is the share of the pool at
or above it (itself counted), the combined statistic is the smallest of its parts' p-values, and the
test's p-value is the share of the pool whose combined statistic is at or below the observed one
(itself counted). The combined statistic is a symmetric function of the pool, so when the observed
statistic and the draws are exchangeable under H0 the test is exact (Westfall & Young, 1993, the
min-p adjustment; here by ranks within one pool). With one part it is the plain bootstrap p-value
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
    size = ref.shape[0] + 1
    # a draw's count of pool values at or above it, in each part, before the observed row joins
    sorted_ref = np.sort(ref, axis=0)
    within = np.stack([ref.shape[0] - np.searchsorted(sorted_ref[:, j], ref[:, j]) for j in range(ref.shape[1])], 1)
    out = np.empty(obs.shape[0])
    for r, row in enumerate(obs):
        above = np.stack([ref.shape[0] - np.searchsorted(sorted_ref[:, j], row[j]) for j in range(obs.shape[1])])
        own = (above + 1).min() / size  # the observed row's min-p (itself counted)
        draws = (within + (row >= ref)).min(axis=1) / size  # each draw's, the observed row in the pool
        out[r] = (1 + int((draws <= own).sum())) / size
    return out


def _as_parts(values) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return a[:, None] if a.ndim == 1 else a
