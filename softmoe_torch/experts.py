"""Expert mean functions h(x, eta) as ``nn.Module``s: ``forward(x)`` maps x (n, d) to means (n,).

The module's parameters are the expert parameters eta. Any ``nn.Module`` with that contract can
be used as an expert (see the README's extension guide); nothing here is special-cased.
"""
import torch
from torch import nn


class IndexExpert(nn.Module):
    """h(x, eta) = act(eta^T x) with eta in R^dim; ``act`` is a torch function."""

    activation = staticmethod(torch.tanh)

    def __init__(self, dim: int):
        super().__init__()
        self.eta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x @ self.eta)

    def extra_repr(self) -> str:
        return f"dim={self.eta.shape[0]}"


class TanhExpert(IndexExpert):
    """h = tanh(eta^T x) (strongly identifiable; the paper's expert)."""


class SigmoidExpert(IndexExpert):
    """h = sigmoid(eta^T x) (strongly identifiable)."""

    activation = staticmethod(torch.sigmoid)


class GELUExpert(IndexExpert):
    """h = GELU(eta^T x) (strongly identifiable)."""

    activation = staticmethod(nn.functional.gelu)


class ReLUExpert(IndexExpert):
    """h = ReLU(eta^T x) (not strongly identifiable: second derivatives vanish)."""

    activation = staticmethod(torch.relu)


class LinearExpert(IndexExpert):
    """h = eta^T x."""

    activation = staticmethod(lambda z: z)


class MLPExpert(nn.Module):
    """A small MLP with one hidden layer: h = w2^T tanh(W1 x + b1) + b2."""

    def __init__(self, dim: int, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
