"""How far a fitted conditional density is from the true one: the Hellinger distance

    H(p_hat, p*) = sqrt( E_x [ 1/2 int (sqrt p_hat(y|x) - sqrt p*(y|x))^2 dy ] ),

the x-expectation over a given sample of x, the y-integral by Gauss-Hermite quadrature. The
quadrature's proposal is the equal mixture of one normal per component of both models (that
component's mean and variance) and the integral is split over it, so each piece is a smooth
function against a normal weight: with 30 nodes, H^2 within about 1e-4 relative (tested against
adaptive quadrature) for Gaussian components; an approximation for the heavier-tailed Laplace and
Student-t. The integrand is a square, so there is no
cancellation even for distances near 1e-4."""

import copy

import numpy as np
import torch

from ..estimation.inference import load_params
from ..model.mixture import ContaminatedMoE

NODES = 30


def _means_variances(model: ContaminatedMoE, x: torch.Tensor):
    """Component means and variances of ``model`` at x (m, d), each (m, K+1)."""
    means = torch.stack([c.mean(x) for c in model.components], -1)
    variances = torch.stack([c.nu.expand(x.shape[0]) for c in model.components], -1)
    return means, variances


def hellinger(truth: ContaminatedMoE, fitted: ContaminatedMoE, x: torch.Tensor, nodes: int = NODES) -> float:
    """H between two models' conditional densities of y, averaged (in H^2) over x (m, d)."""
    with torch.no_grad():
        m1, v1 = _means_variances(truth, x)
        m2, v2 = _means_variances(fitted, x)
        mean, var = torch.cat([m1, m2], -1), torch.cat([v1, v2], -1)  # (m, C) proposal components
        z, w = np.polynomial.hermite_e.hermegauss(nodes)  # weight exp(-z^2/2), sum w = sqrt(2 pi)
        z = torch.as_tensor(z, dtype=x.dtype, device=x.device)
        w = torch.as_tensor(w / w.sum(), dtype=x.dtype, device=x.device)
        y = mean.unsqueeze(-1) + var.sqrt().unsqueeze(-1) * z  # (m, C, Q)
        m, C, Q = y.shape
        flat_y = y.reshape(m, C * Q)
        xx = x.unsqueeze(1).expand(m, C * Q, x.shape[1]).reshape(m * C * Q, -1)
        log_p = truth.log_prob(xx, flat_y.reshape(-1)).reshape(m, C, Q)
        log_q = fitted.log_prob(xx, flat_y.reshape(-1)).reshape(m, C, Q)
        # proposal density r(y) = mean over components of N(y; mean_c, var_c), at every node
        diff = (flat_y.unsqueeze(1) - mean.unsqueeze(-1)) ** 2 / var.unsqueeze(-1)  # (m, C, C*Q)
        log_phi = -0.5 * (diff + torch.log(2 * torch.pi * var).unsqueeze(-1))
        log_r = (torch.logsumexp(log_phi, dim=1) - np.log(C)).reshape(m, C, Q)
        integrand = 0.5 * (torch.exp(0.5 * (log_p - log_r)) - torch.exp(0.5 * (log_q - log_r))) ** 2
        h2 = (integrand * w).sum(-1).mean(-1)  # (m,): sum_c (1/C) E_{N_c}[g / r]
        return float(h2.mean().clamp_min(0).sqrt())


def hellinger_batch(truth: ContaminatedMoE, model: ContaminatedMoE, params: dict, x: torch.Tensor) -> torch.Tensor:
    """H of each of R fits, params {name: (R, ...)}, against ``truth``; x (m, d) -> (R,)."""
    R = next(iter(params.values())).shape[0]
    fitted = copy.deepcopy(model).to(device=x.device, dtype=x.dtype)
    return torch.tensor([hellinger(truth, load_params(fitted, params, r), x) for r in range(R)], dtype=torch.float64)
