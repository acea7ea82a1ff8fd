"""Starting points {name: (R, *shape)} for the fitting driver, by policy:

- ``near_truth``: the paper's protocol, truth plus a seeded perturbation of size ``scale``
  (additive for real parameters, multiplicative exp(scale * z) for positive ones);
- ``random``: seeded random starts needing no truth (``n_init`` of them; the best fit is kept).

Each parameter's domain is the one its module declares (``params.declared_constraint``)."""
import torch
from torch.distributions import constraints

from .params import declared_constraint, stack_params

POLICIES = ("near_truth", "random")


def _positive(model, name) -> bool:
    return declared_constraint(model, name) is constraints.positive


def near_truth(model, truth: dict, R: int, scale: float, seed: int) -> dict:
    """truth {name: tensor} -> R perturbed copies {name: (R, *shape)}, float64."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, value in truth.items():
        value = value.to(torch.float64)
        z = torch.randn((R, *value.shape), generator=gen, dtype=torch.float64)
        out[name] = value * torch.exp(scale * z) if _positive(model, name) else value + scale * z
    return out


def random_start(model, Y: torch.Tensor, seed: int) -> dict:
    """One random start per data set, Y (R, n) or (n,): real parameters ~ N(0, 1/fan_in) (fan_in:
    the last dimension, 1 for scalars), positive ones (variances) at the sample variance of y times
    exp(N(0, 1)). Float64, {name: (R, *shape)}."""
    Y = Y.reshape(-1, Y.shape[-1])
    R = Y.shape[0]
    gen = torch.Generator().manual_seed(seed)
    start = {}
    for name, v in stack_params(model, R).items():
        z = torch.randn(v.shape, generator=gen, dtype=torch.float64)
        if _positive(model, name):
            var = Y.var(dim=1).cpu().to(torch.float64).clamp_min(1e-6)  # constant y: still a valid start
            start[name] = var.reshape(R, *[1] * (v.dim() - 1)) * z.exp()
        else:
            fan_in = v.shape[-1] if v.dim() > 1 else 1
            start[name] = z / fan_in**0.5
    return start


def starting_points(model, Y: torch.Tensor, policy: str, seed_of, truth: dict | None = None, scale: float = 0.1,
                    n_init: int = 1) -> list:
    """A list of init dicts {name: (R, ...)}, one per start (``n_init`` for ``random``, one for
    ``near_truth``), for data Y (R, n). seed_of(i, j) -> seed of start i of replication j, so that
    a replication's starts do not depend on which others are fitted beside it."""
    R = Y.shape[0]
    if policy == "near_truth":
        if truth is None:
            raise ValueError("init.policy=near_truth needs the true parameters; on real data use init=random")
        return [_stack([near_truth(model, truth, 1, scale, seed_of(0, j)) for j in range(R)])]
    if policy == "random":
        if n_init < 1:
            raise ValueError(f"init.n_init must be at least 1, got {n_init}")
        return [_stack([random_start(model, Y[j : j + 1], seed_of(i, j)) for j in range(R)]) for i in range(n_init)]
    raise ValueError(f"unknown init.policy {policy!r}; use {' or '.join(POLICIES)}")


def _stack(per_rep: list) -> dict:
    """One-replication init dicts {name: (1, ...)} -> one dict {name: (R, ...)}."""
    return {k: torch.cat([p[k] for p in per_rep]) for k in per_rep[0]}
