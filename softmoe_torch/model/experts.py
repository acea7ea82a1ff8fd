"""Expert mean functions h(x, eta) as ``nn.Module``s: ``forward(x)`` maps x (n, d) to means (n,).

The module's parameters are the expert parameters eta. Any ``nn.Module`` with that contract can
be used as an expert (see the README's extension guide); nothing here is special-cased.
"""

import math

import torch
from torch import nn


class IndexExpert(nn.Module):
    """h(x, eta) = act(eta^T x) with eta in R^dim; ``act`` is a torch function.

    ``activation_derivatives(z) -> (act, act', act'')``, element-wise, lets the fused fast path
    (``softmoe_torch.estimation.objective.FusedObjective``) evaluate this expert; a subclass that changes ``activation``
    without giving its derivatives too is fitted through the generic autograd path."""

    activation = staticmethod(torch.tanh)
    activation_derivatives = staticmethod(lambda z: _tanh_derivatives(z))

    def __init__(self, dim: int, eta=None):
        super().__init__()
        self.eta = nn.Parameter(
            torch.zeros(dim)
            if eta is None
            else torch.as_tensor(eta, dtype=torch.get_default_dtype()).reshape(dim).clone()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x @ self.eta)

    def extra_repr(self) -> str:
        return f"dim={self.eta.shape[0]}"


def _tanh_derivatives(z):
    t = torch.tanh(z)
    d1 = 1 - t * t
    return t, d1, -2 * t * d1


def _sigmoid_derivatives(z):
    s = torch.sigmoid(z)
    d1 = s * (1 - s)
    return s, d1, d1 * (1 - 2 * s)


def _gelu_derivatives(z):
    cdf = 0.5 * (1 + torch.erf(z * math.sqrt(0.5)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return z * cdf, cdf + z * pdf, pdf * (2 - z * z)


def _relu_derivatives(z):
    pos = (z > 0).to(z.dtype)
    return torch.relu(z), pos, torch.zeros_like(z)


def _linear_derivatives(z):
    return z, torch.ones_like(z), torch.zeros_like(z)


class TanhExpert(IndexExpert):
    """h = tanh(eta^T x) (strongly identifiable; the paper's expert)."""


class SigmoidExpert(IndexExpert):
    """h = sigmoid(eta^T x) (strongly identifiable)."""

    activation = staticmethod(torch.sigmoid)
    activation_derivatives = staticmethod(_sigmoid_derivatives)


class GELUExpert(IndexExpert):
    """h = GELU(eta^T x) (strongly identifiable)."""

    activation = staticmethod(nn.functional.gelu)
    activation_derivatives = staticmethod(_gelu_derivatives)


class ReLUExpert(IndexExpert):
    """h = ReLU(eta^T x) (not strongly identifiable: second derivatives vanish)."""

    activation = staticmethod(torch.relu)
    activation_derivatives = staticmethod(_relu_derivatives)


class LinearExpert(IndexExpert):
    """h = eta^T x."""

    activation = staticmethod(lambda z: z)
    activation_derivatives = staticmethod(_linear_derivatives)


class AffineExpert(IndexExpert):
    """h = act(eta^T x + bias) with act the identity: a linear expert with an intercept (the
    experts of softmax-gated Gaussian MoE regression). Subclasses change ``activation`` (and its
    derivatives) to give one-neuron experts act(eta^T x + bias)."""

    activation = staticmethod(lambda z: z)
    activation_derivatives = staticmethod(_linear_derivatives)

    def __init__(self, dim: int, eta=None, bias: float = 0.0):
        super().__init__(dim, eta)
        self.bias = nn.Parameter(torch.tensor(float(bias), dtype=self.eta.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x @ self.eta + self.bias)


class AffineReLUExpert(AffineExpert):
    """h = ReLU(eta^T x + bias): a one-neuron ReLU layer (the ReLU experts of the sigmoid-gating
    regression study)."""

    activation = staticmethod(torch.relu)
    activation_derivatives = staticmethod(_relu_derivatives)


class AffineSigmoidExpert(AffineExpert):
    """h = sigmoid(eta^T x + bias): a ridge expert (not strongly identifiable: dh/deta = x dh/dbias)."""

    activation = staticmethod(torch.sigmoid)
    activation_derivatives = staticmethod(_sigmoid_derivatives)


class MLPExpert(nn.Module):
    """A small MLP with one hidden layer: h = w2^T tanh(W1 x + b1) + b2."""

    def __init__(self, dim: int, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
