"""Mixtures of experts as compositions of ``nn.Module``s: the general one (every component
frozen or trainable) and the softmax-contaminated one (a frozen, known component 0)."""

import torch
from torch import nn
from torch.distributions import constraints

from .densities import Density


class Component(nn.Module):
    """One mixture component f(y | h(x), nu): an expert mean function, a density family and a
    variance ``nu`` (a positive scalar parameter, in the expert's dtype; float64 for an expert
    without parameters). ``frozen=True`` makes it a fixed, known
    component whose parameters never receive gradients."""

    param_constraints = {"nu": constraints.positive}

    def __init__(self, expert: nn.Module, density: Density, nu: float = 1.0, frozen: bool = False):
        super().__init__()
        if not nu > 0:
            raise ValueError(f"a component's variance nu must be positive, got {nu}")
        self.expert = expert
        self.density = density
        dtype = next(expert.parameters(), torch.empty(0, dtype=torch.float64)).dtype
        self.nu = nn.Parameter(torch.tensor(float(nu), dtype=dtype))
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """x (n, d) -> expert means (n,)."""
        return self.expert(x)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (n, d), y (n,) -> log f(y | h(x), nu), shape (n,)."""
        return self.density.log_prob(y, self.mean(x), self.nu)


class Mixture(nn.Module):
    """The base class of every mixture of experts: what it computes from its ``components`` (a
    sequence of ``Component``s, 0 the gate's reference) and its ``gate`` (x (n, d) -> log-weights
    (n, K)). A new mixture family subclasses it, sets ``components`` and ``gate`` and names its
    components (``component_names``); the estimator fits any ``Mixture``."""

    def log_joint(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (n, d), y (n,) -> log w_k(x) + log f_k(y | x), shape (n, K)."""
        log_f = torch.stack([c(x, y) for c in self.components], dim=-1)
        return self.gate(x) + log_f

    def forward(self, x: torch.Tensor, y: torch.Tensor, joint: bool = False) -> torch.Tensor:
        """Per-sample log-likelihood log p(y | x), shape (n,); with ``joint`` the log joint (n, K)."""
        log_joint = self.log_joint(x, y)
        return log_joint if joint else torch.logsumexp(log_joint, dim=-1)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample log-likelihood log p(y | x), shape (n,)."""
        return self(x, y)

    def responsibilities(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Posterior component probabilities given (x, y), shape (n, K)."""
        return torch.softmax(self.log_joint(x, y), dim=-1)

    def gate_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Gate weights w_k(x), shape (n, K); rows sum to one."""
        return self.gate(x).exp()

    def predictive_mean(self, x: torch.Tensor) -> torch.Tensor:
        """E[y | x] = sum_k w_k(x) h_k(x), shape (n,)."""
        means = torch.stack([c.mean(x) for c in self.components], dim=-1)
        return (self.gate_probs(x) * means).sum(-1)

    @torch.no_grad()
    def sample(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """Draw y | x for each row of x (n, d); returns (n,)."""
        w = self.gate_probs(x)
        k = torch.multinomial(w, 1, generator=generator).squeeze(-1)
        draws = torch.stack(
            [c.density.sample(c.mean(x), c.nu.expand(x.shape[0]), generator) for c in self.components],
            dim=-1,
        )
        return draws.gather(-1, k[:, None]).squeeze(-1)

    def trainable_parameters(self) -> dict:
        """Name -> parameter for everything fitting may move (frozen components excluded)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def component_names(self) -> list:
        """The parameter-name prefix of each component, in gate-column order."""
        raise NotImplementedError(f"{type(self).__name__} must name its components (component_names)")


class MixtureOfExperts(Mixture):
    """p(y | x) = sum_k w_k(x) f_k(y | h_k(x), nu_k), k = 0..K-1: every component frozen or
    trainable; ``gate`` maps x (n, d) to log-weights (n, K) with component 0 the reference (its
    logit fixed at 0, which identifies the softmax gate), e.g. ``SoftmaxGate(d, n_prompts=K - 1)``.
    Parameters are named ``components.<k>.<...>`` and ``gate.<...>``."""

    def __init__(self, components, gate: nn.Module):
        super().__init__()
        components = list(components)
        if len(components) < 2:
            raise ValueError(f"a mixture of experts needs at least 2 components, got {len(components)}")
        self.components = nn.ModuleList(components)
        self.gate = gate

    def component_names(self) -> list:
        return [f"components.{k}" for k in range(len(self.components))]


class ContaminatedMoE(Mixture):
    """p(y | x) = w_0(x) f0(y | h0(x), nu0) + sum_k w_k(x) f_k(y | h_k(x), nu_k): the mixture of
    experts whose reference component 0 is frozen and known.

    ``pretrained`` must be frozen; ``prompts`` are the K >= 1 trainable components; ``gate``
    maps x (n, d) to log-weights (n, K+1), column 0 for the pre-trained component."""

    def __init__(self, pretrained: Component, prompts, gate: nn.Module):
        super().__init__()
        if not pretrained.frozen or any(p.requires_grad for p in pretrained.parameters()):
            raise ValueError("the pre-trained component must be frozen (no trainable parameters)")
        prompts = [prompts] if isinstance(prompts, Component) else list(prompts)
        if not prompts:
            raise ValueError("a contaminated mixture needs at least one prompt component")
        self.pretrained = pretrained
        self.prompts = nn.ModuleList(prompts)
        self.gate = gate

    @property
    def components(self):
        return [self.pretrained, *self.prompts]

    def component_names(self) -> list:
        return ["pretrained", *(f"prompts.{k}" for k in range(len(self.prompts)))]
