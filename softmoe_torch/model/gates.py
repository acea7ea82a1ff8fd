"""Gates: ``forward(x)`` maps x (n, d) to log-weights, one column per component.

The softmax gates are over {reference, prompt_1..prompt_K}, (n, K+1): column 0 is the reference
component (the pre-trained one of a contaminated mixture), whose logit is fixed at 0, so for
K = 1 the prompt's weight is the paper's sigmoid(beta^T x + tau). The sigmoid gate (regression
mixtures only) gives each of its K experts its own weight, not normalised.
"""

import torch
from torch import nn
from torch.distributions import constraints


def _log_weights(prompt_logits: torch.Tensor) -> torch.Tensor:
    """(n, K) prompt logits -> (n, K+1) log-softmax with a zero logit for the reference column."""
    zero = torch.zeros_like(prompt_logits[..., :1])
    return torch.log_softmax(torch.cat([zero, prompt_logits], dim=-1), dim=-1)


def _values(v, shape) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.get_default_dtype()).reshape(shape).clone()


class _AffineLogits(nn.Module):
    """Gate parameters beta (rows, d), tau (rows,): row k's logit is beta_k^T x + tau_k."""

    param_constraints = {"beta": constraints.real, "tau": constraints.real}

    def __init__(self, dim: int, rows: int, beta=None, tau=None):
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(rows, dim) if beta is None else _values(beta, (rows, dim)))
        self.tau = nn.Parameter(torch.zeros(rows) if tau is None else _values(tau, (rows,)))


class SoftmaxGate(_AffineLogits):
    """Input-dependent gate: prompt (non-reference component) k has logit beta_k^T x + tau_k;
    beta (K, d), tau (K,). A mixture of K + 1 components takes ``n_prompts=K``."""

    def __init__(self, dim: int, n_prompts: int = 1, beta=None, tau=None):
        super().__init__(dim, n_prompts, beta, tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _log_weights(x @ self.beta.T + self.tau)


class ConstantGate(nn.Module):
    """Input-free gate (constant weights): prompt k has logit tau_k; tau (K,)."""

    param_constraints = {"tau": constraints.real}

    def __init__(self, n_prompts: int = 1, tau=None):
        super().__init__()
        self.tau = nn.Parameter(torch.zeros(n_prompts) if tau is None else _values(tau, (n_prompts,)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _log_weights(self.tau.expand(*x.shape[:-1], -1))


class SigmoidGate(_AffineLogits):
    """One unnormalised weight per expert, sigmoid(beta_k^T x + tau_k), k = 1..K; beta (K, d), tau (K,);
    ``forward`` gives their logs (n, K). For regression mixtures (``RegressionMoE``): the weights
    of a mixture density must sum to one."""

    def __init__(self, dim: int, n_experts: int = 1, beta=None, tau=None):
        super().__init__(dim, n_experts, beta, tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.logsigmoid(x @ self.beta.T + self.tau)
