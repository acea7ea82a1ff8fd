"""The broad-prompt part of the contamination test: the likelihood ratio of H0 against a fixed,
broad contamination, for a few observations far from f0 that a prompt started at f0 does not reach
in a few iterations.

For each variance ratio k in ``ratios``, the alternative is (1 - eps) f0(y | h0(x), nu0) +
eps f0(y | h0(x), k nu0): f0's own family, mean and expert, its variance k times larger, a constant
weight eps in [0, 1]. The log-likelihood L_k(eps) = sum_i log(1 - eps + eps r_ik), r_ik the ratio of
the broad density to f0's at observation i, is concave in eps, so its maximum is found by bisection
on the derivative. The statistic is 2 max_k max_eps L_k(eps) >= 0 (0 when no eps > 0 raises the
likelihood). Nothing is fitted: it costs a few passes over the data."""

import torch

RATIOS = (10.0, 100.0, 1000.0)  # the broad prompts' variances, as multiples of f0's
EPS_MAX = 1.0 - 1e-9  # the weight's upper end (r = 0 somewhere would make eps = 1 -inf)
BISECTIONS = 64


def broad_statistics(pretrained, X: torch.Tensor, Y: torch.Tensor, ratios=RATIOS) -> torch.Tensor:
    """2 max over k in ``ratios`` and eps in [0, 1] of sum_i log(1 - eps + eps r_ik), r_ik = f0(y_i |
    h0(x_i), k nu0) / f0(y_i | h0(x_i), nu0), for the frozen component ``pretrained``.
    X (R, n, d), Y (R, n) -> (R,) float64 on the CPU."""
    check_ratios(ratios)
    with torch.no_grad():
        mean = torch.stack([pretrained.mean(x) for x in X])  # (R, n)
        nu = pretrained.nu.to(Y.dtype)
        log0 = pretrained.density.log_prob(Y, mean, nu.expand_as(Y))
        log_r = torch.stack(
            [pretrained.density.log_prob(Y, mean, (k * nu).expand_as(Y)) - log0 for k in ratios], dim=1
        )  # (R, K, n)
        eps = _argmax_weight(log_r)
        value = torch.logaddexp(torch.log1p(-eps)[..., None], torch.log(eps)[..., None] + log_r).sum(-1)
        value = torch.where(eps > 0, value, torch.zeros_like(value))
        return 2.0 * value.max(dim=1).values.double().cpu()


def _argmax_weight(log_r: torch.Tensor) -> torch.Tensor:
    """The maximiser in [0, EPS_MAX] of sum_i log(1 - eps + eps r_i) per leading index, log_r (..., n)
    -> (...,). The derivative sum_i s_i / (1 + eps s_i), s_i = r_i - 1, decreases in eps."""
    s = torch.expm1(log_r)  # may be inf for a far observation: its term is then 1 / eps

    def slope(eps):
        return (1.0 / (eps[..., None] + 1.0 / s)).sum(-1)

    zero = torch.zeros(log_r.shape[:-1], dtype=log_r.dtype, device=log_r.device)
    lo, hi = zero.clone(), torch.full_like(zero, EPS_MAX)
    rising = s.sum(-1) > 0  # the derivative at 0: no gain anywhere when it is <= 0
    at_top = slope(hi) >= 0
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        up = slope(mid) > 0
        lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
    eps = torch.where(at_top, torch.full_like(zero, EPS_MAX), (lo + hi) / 2)
    return torch.where(rising, eps, zero)


def check_ratios(ratios):
    """A one-line ValueError unless ``ratios`` is a non-empty list or tuple of numbers > 1."""
    ok = isinstance(ratios, (list, tuple)) and len(ratios) > 0
    if not ok or any(isinstance(k, bool) or not isinstance(k, (int, float)) or not k > 1 for k in ratios):
        raise ValueError(f"the broad prompts' variance ratios must be a non-empty list of numbers > 1, got {ratios!r}")
