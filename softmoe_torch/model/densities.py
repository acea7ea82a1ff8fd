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

    def derivatives(self, y: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor):
        """Element-wise (L, dL/dm, dL/dv, d2L/dm2, d2L/dmdv, d2L/dv2) of L = log f(y | m, v), each of
        y's shape. Optional: a family that gives them gets the fused fast path (``estimation/objective.py``);
        ``None`` (the default) means the generic autograd path is used."""
        return None

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

    def derivatives(self, y, mean, variance):
        e, v = y - mean, variance
        e2, iv = e * e, 1 / v
        L = -0.5 * (e2 * iv + torch.log(2 * math.pi * v))
        return L, e * iv, 0.5 * (e2 * iv - 1) * iv, -iv.expand_as(e), -e * iv * iv, (0.5 - e2 * iv) * iv * iv

    def standard_sample(self, shape, generator=None, dtype=None, device=None):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)


class Laplace(Density):
    """Laplace distribution with the given variance: scale b = sqrt(variance / 2)."""

    def log_prob(self, y, mean, variance):
        scale = torch.sqrt(variance / 2)
        return -(y - mean).abs() / scale - torch.log(2 * scale)

    def derivatives(self, y, mean, variance):
        # L = -|e| sqrt(2/v) - log(2v)/2; derivatives in m hold almost everywhere (sign(0) = 0, as autograd)
        e, v = y - mean, variance
        a, sg, k = e.abs(), torch.sign(e), torch.sqrt(2 / v)  # k = 1 / scale
        L = -a * k - 0.5 * torch.log(2 * v)
        iv = 1 / v
        return (
            L,
            sg * k,
            0.5 * (a * k - 1) * iv,
            torch.zeros_like(e),
            -0.5 * sg * k * iv,
            (0.5 - 0.75 * a * k) * iv * iv,
        )

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

    def derivatives(self, y, mean, variance):
        # L = const + (df/2) log v - ((df+1)/2) log A with A = v (df-2) + e^2
        df, c = self.df, self.df - 2
        e, v = y - mean, variance
        e2 = e * e
        A = v * c + e2
        iA = 1 / A
        return (
            self.log_prob(y, mean, v),
            (df + 1) * e * iA,
            0.5 * (df / v - (df + 1) * c * iA),
            (df + 1) * (e2 - v * c) * iA * iA,
            -(df + 1) * c * e * iA * iA,
            0.5 * ((df + 1) * c * c * iA * iA - df / (v * v)),
        )

    def standard_sample(self, shape, generator=None, dtype=None, device=None):
        z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        from scipy.stats import chi2  # imported here: scipy.stats costs seconds at start-up

        # chi-square(df) by inverse CDF, so that the draw follows ``generator``
        u = torch.rand(
            shape, generator=generator, dtype=torch.float64, device=generator.device if generator else "cpu"
        ).cpu()
        chi = torch.as_tensor(chi2.ppf(u.numpy(), self.df), dtype=z.dtype, device=z.device)
        t = z / torch.sqrt(chi / self.df)
        return t * math.sqrt((self.df - 2) / self.df)

    def extra_repr(self) -> str:
        return f"df={self.df}"
