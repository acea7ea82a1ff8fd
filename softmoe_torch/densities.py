"""Density families f(y | mean, variance), parametrized by mean and variance.

Each family is a parameter-free ``nn.Module``; ``log_prob`` is element-wise with broadcasting
and ``sample`` draws ``mean + sqrt(variance) * eps`` with ``eps`` of unit variance.
"""
import math

import torch
from torch import nn


class Density(nn.Module):
    """A location family with unit-variance standard form ``eps``; subclasses give its log-density."""

    def log_prob(self, y: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        """Log-density of y (any shape) given mean and variance (broadcastable)."""
        raise NotImplementedError

    def standard_sample(self, shape, generator=None, dtype=None, device=None) -> torch.Tensor:
        """Draws of zero mean and unit variance, of the given shape."""
        raise NotImplementedError

    def sample(self, mean: torch.Tensor, variance: torch.Tensor, generator=None) -> torch.Tensor:
        """One draw per element of ``mean`` (shape of ``mean``)."""
        eps = self.standard_sample(mean.shape, generator, mean.dtype, mean.device)
        return mean + variance.sqrt() * eps

    def extra_repr(self) -> str:
        return ""


class Gaussian(Density):
    """Normal distribution N(mean, variance)."""

    def log_prob(self, y, mean, variance):
        return -0.5 * ((y - mean) ** 2 / variance + torch.log(2 * math.pi * variance))

    def standard_sample(self, shape, generator=None, dtype=None, device=None):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)


class Laplace(Density):
    """Laplace distribution with the given variance: scale b = sqrt(variance / 2)."""

    def log_prob(self, y, mean, variance):
        scale = torch.sqrt(variance / 2)
        return -(y - mean).abs() / scale - torch.log(2 * scale)

    def standard_sample(self, shape, generator=None, dtype=None, device=None):
        u = torch.rand(shape, generator=generator, dtype=dtype, device=device) - 0.5
        # inverse CDF of the unit-scale Laplace, rescaled to unit variance (scale 1/sqrt(2))
        return -torch.sign(u) * torch.log1p(-2 * u.abs()) / math.sqrt(2)


class StudentT(Density):
    """Student-t with ``df > 2`` degrees of freedom and the given variance:
    scale = sqrt(variance * (df - 2) / df)."""

    def __init__(self, df: float = 5.0):
        super().__init__()
        if not df > 2:
            raise ValueError(f"StudentT needs df > 2 for a finite variance, got df={df}")
        self.df = float(df)

    def log_prob(self, y, mean, variance):
        df = self.df
        scale2 = variance * (df - 2) / df
        z2 = (y - mean) ** 2 / scale2
        const = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
        return const - 0.5 * torch.log(scale2) - (df + 1) / 2 * torch.log1p(z2 / df)

    def standard_sample(self, shape, generator=None, dtype=None, device=None):
        z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        from scipy.stats import chi2  # imported here: scipy.stats costs seconds at start-up

        # chi-square(df) by inverse CDF, so that the draw follows ``generator``
        u = torch.rand(shape, generator=generator, dtype=torch.float64, device=generator.device if generator else "cpu").cpu()
        chi = torch.as_tensor(chi2.ppf(u.numpy(), self.df), dtype=z.dtype, device=z.device)
        t = z / torch.sqrt(chi / self.df)
        return t * math.sqrt((self.df - 2) / self.df)

    def extra_repr(self) -> str:
        return f"df={self.df}"
