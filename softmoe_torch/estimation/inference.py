"""Inference at an MLE: the observed information, Wald standard errors, AIC and BIC.

These are the computations; ``results.FitResults`` is the object a user asks
(``res.se()``, ``res.conf_int()``, ``res.aic``)."""

import math
import warnings

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


def aic(loglik, n_params: int):
    """Akaike's criterion 2 p - 2 log L (smaller is better)."""
    return 2 * n_params - 2 * loglik


def bic(loglik, n_params: int, n: int):
    """Schwarz's criterion p log n - 2 log L (smaller is better)."""
    return n_params * math.log(n) - 2 * loglik


def observed_information(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Minus the autograd Hessian of the total log-likelihood in the natural trainable parameters
    (flattened in ``model.trainable_parameters()`` order) at the model's current values;
    x (n, d), y (n,) -> (p, p)."""
    params = model.trainable_parameters()
    names, shapes = list(params), [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]
    theta = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def loglik(t):
        values = {n: v.reshape(s) for n, v, s in zip(names, t.split(sizes), shapes)}
        return functional_call(model, values, (x, y)).sum()

    info = -torch.autograd.functional.hessian(loglik, theta)  # torch.func.hessian would import dynamo (~3 s)
    return (info + info.T) / 2


def wald_covariance(info: torch.Tensor) -> torch.Tensor:
    """The inverse of the observed information (p, p); all NaN, with a RuntimeWarning, where it is
    not positive definite (an estimate at a bound, or parameters the data do not identify)."""
    chol, failed = torch.linalg.cholesky_ex(info)
    if failed:
        warnings.warn(
            "the observed information is not positive definite (an estimate at a bound of fit.bounds, or "
            "parameters the data do not identify); standard errors are NaN",
            RuntimeWarning,
            stacklevel=3,
        )
        return torch.full_like(info, math.nan)
    return torch.cholesky_inverse(chol)
