"""Inference for a fitted model: load estimates into a model, standard errors from the observed
information, Wald intervals, AIC and BIC.

    res = em.fit(model, X, Y, init)              # X (R, n, d), Y (R, n)
    load_params(model, res.params, r)            # then model.predictive_mean(x), .gate_probs(x),
                                                 # .responsibilities(x, y) use replication r's MLE
    inf = infer(model, X[r], Y[r])               # SEs, 95% Wald intervals, AIC, BIC at that MLE
    criteria(model, X[r], Y[r])                  # only log-likelihood, AIC, BIC (no Hessian)
"""
import math
import warnings
from dataclasses import dataclass

import torch
from torch.func import functional_call


def load_params(model, params: dict, r: int = 0):
    """Copy replication r of fitted params {name: (R, *shape)} into ``model`` (in place); returns
    the model. Names not among the model's parameters raise a ValueError."""
    own = dict(model.named_parameters())
    unknown = set(params) - set(own)
    if unknown:
        raise ValueError(f"unknown parameters {sorted(unknown)}; the model has {sorted(own)}")
    with torch.no_grad():
        for name, value in params.items():
            own[name].copy_(value[r])
    return model


def aic(loglik: float, n_params: int) -> float:
    """Akaike's criterion 2 p - 2 log L (smaller is better)."""
    return 2 * n_params - 2 * loglik


def bic(loglik: float, n_params: int, n: int) -> float:
    """Schwarz's criterion p log n - 2 log L (smaller is better)."""
    return n_params * math.log(n) - 2 * loglik


@dataclass
class Inference:
    """Wald inference at an MLE. estimate, se, lower, upper: {name: tensor of the parameter's
    shape}; covariance (p, p) over the flattened parameters in ``estimate`` order; loglik: the
    total log-likelihood; n: sample size; level: coverage of [lower, upper]."""

    estimate: dict
    se: dict
    lower: dict
    upper: dict
    covariance: torch.Tensor
    loglik: float
    n: int
    level: float

    @property
    def n_params(self) -> int:
        """Number of free scalar parameters p."""
        return self.covariance.shape[0]

    @property
    def aic(self) -> float:
        """2 p - 2 log L."""
        return aic(self.loglik, self.n_params)

    @property
    def bic(self) -> float:
        """p log n - 2 log L."""
        return bic(self.loglik, self.n_params, self.n)


def criteria(model, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Total log-likelihood, number of free parameters, AIC and BIC at the model's current
    parameters, without the Hessian; x (n, d), y (n,)."""
    with torch.no_grad():
        loglik = float(model.log_prob(x, y).sum())
    p = sum(v.numel() for v in model.trainable_parameters().values())
    return {"loglik": loglik, "n_params": p, "aic": aic(loglik, p), "bic": bic(loglik, p, y.shape[0])}


def observed_information(model, x: torch.Tensor, y: torch.Tensor):
    """Minus the autograd Hessian of the total log-likelihood in the natural parameters (beta,
    tau, expert parameters, variances nu) at the model's current values; x (n, d), y (n,).
    Returns (theta (p,), information (p, p), total log-likelihood)."""
    params = model.trainable_parameters()
    names, shapes = list(params), [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]
    theta = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def loglik(t):
        values = {n: v.reshape(s) for n, v, s in zip(names, t.split(sizes), shapes)}
        return functional_call(model, values, (x, y)).sum()

    with torch.no_grad():
        total = float(loglik(theta))
    info = -torch.autograd.functional.hessian(loglik, theta)  # torch.func.hessian would import dynamo (~3 s)
    return theta, (info + info.T) / 2, total


def infer(model, x: torch.Tensor, y: torch.Tensor, level: float = 0.95) -> Inference:
    """Standard errors sqrt(diag(I^-1)) from the observed information I at the model's current
    parameters (load the MLE first with ``load_params``) and Wald intervals estimate -/+ z se.
    Where I is not positive definite (an estimate at a bound, a non-identifiable expert) the
    standard errors are NaN, with a RuntimeWarning."""
    theta, info, total = observed_information(model, x, y)
    chol, failed = torch.linalg.cholesky_ex(info)
    if failed:
        warnings.warn(
            "the observed information is not positive definite (an estimate at a bound of fit.bounds, or "
            "parameters the data do not identify); standard errors are NaN",
            RuntimeWarning,
            stacklevel=2,
        )
        cov = torch.full_like(info, math.nan)
    else:
        cov = torch.cholesky_inverse(chol)
    se_flat = cov.diagonal().sqrt()
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + level / 2)).item()
    params = model.trainable_parameters()
    est, se, start = {}, {}, 0
    for name, p in params.items():
        est[name] = theta[start : start + p.numel()].reshape(p.shape)
        se[name] = se_flat[start : start + p.numel()].reshape(p.shape)
        start += p.numel()
    return Inference(
        estimate=est,
        se=se,
        lower={k: est[k] - z * se[k] for k in est},
        upper={k: est[k] + z * se[k] for k in est},
        covariance=cov,
        loglik=total,
        n=y.shape[0],
        level=level,
    )
