"""Regression mixtures of experts: a regression function that is a mixture of experts,

    Y = f_G(X) + eps,  eps ~ N(0, nu),  f_G(x) = sum_{k=1..K} g_k(x) h_k(x),

fitted by least squares (``Estimator(model, method="lm")``). The gate gives log-weights (n, K):
a ``SoftmaxGate`` (normalised, expert 0 its reference) or a ``SigmoidGate`` (one weight per
expert, not normalised), or any module with that contract; the experts are any modules mapping
x (n, d) to (n,). The noise variance ``nu`` is used to simulate; least squares estimates it as
RSS / n."""

import math

import torch
from torch import nn


class RegressionMoE(nn.Module):
    """f(x) = sum_k g_k(x) h_k(x) with ``experts`` (K modules, x (n, d) -> (n,)) and ``gate``
    (x (n, d) -> log-weights (n, K)); ``nu`` the noise variance (a buffer, not fitted by
    gradient). Parameters are named ``experts.<k>.<...>`` and ``gate.<...>``."""

    def __init__(self, experts, gate: nn.Module, nu: float = 1.0):
        super().__init__()
        experts = list(experts)
        if not experts:
            raise ValueError("a regression mixture of experts needs at least one expert")
        if not nu > 0:
            raise ValueError(f"the noise variance nu must be positive, got {nu}")
        self.experts = nn.ModuleList(experts)
        self.gate = gate
        self.register_buffer("nu", torch.tensor(float(nu), dtype=torch.float64))

    def gate_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Gate weights g_k(x), shape (n, K)."""
        return self.gate(x).exp()

    def expert_means(self, x: torch.Tensor) -> torch.Tensor:
        """Each expert's output h_k(x), shape (n, K)."""
        return torch.stack([e(x) for e in self.experts], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The regression function f(x), shape (n,)."""
        return (self.gate_probs(x) * self.expert_means(x)).sum(-1)

    def predictive_mean(self, x: torch.Tensor) -> torch.Tensor:
        """E[y | x] = f(x), shape (n,)."""
        return self(x)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log N(y | f(x), nu) per sample, shape (n,)."""
        nu = self.nu.to(x.dtype)
        return -0.5 * ((y - self(x)) ** 2 / nu + torch.log(2 * math.pi * nu))

    @torch.no_grad()
    def sample(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """y = f(x) + N(0, nu) for each row of x (n, d); returns (n,)."""
        eps = torch.randn(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
        return self(x) + self.nu.to(x.dtype).sqrt() * eps

    def trainable_parameters(self) -> dict:
        """Name -> parameter for everything least squares moves."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def component_names(self) -> list:
        """The parameter-name prefix of each expert, in gate-column order."""
        return [f"experts.{k}" for k in range(len(self.experts))]
