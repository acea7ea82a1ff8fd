"""Initialization policies: starting values {name: (R, *shape)} for ``em.fit``.

- ``near_truth``: the paper's protocol, truth plus a seeded perturbation of size ``scale``
  (additive for beta, tau and expert parameters, multiplicative exp(scale * z) for variances);
- ``values``: given explicitly;
- ``random``: seeded random starts (``n_init`` of them per data set; ``em.fit_best_of`` keeps the best).
"""
import torch

from .params import param_kind, stack_params


def near_truth(truth: dict, R: int, scale: float, seed: int) -> dict:
    """truth {name: tensor} -> R perturbed copies {name: (R, *shape)}."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, value in truth.items():
        value = value.to(torch.float64)
        z = torch.randn((R, *value.shape), generator=gen, dtype=torch.float64)
        out[name] = value * torch.exp(scale * z) if param_kind(name) == "nu" else value + scale * z
    return out


def from_values(model, values: dict, R: int) -> dict:
    """Explicit starting values {name: array-like}; parameters not named keep the model's own
    values. Every replication starts at the same point."""
    start = stack_params(model, R)
    unknown = set(values) - set(start)
    if unknown:
        raise ValueError(f"unknown parameters in init values: {sorted(unknown)}; expected some of {sorted(start)}")
    for name, v in values.items():
        v = torch.as_tensor(v, dtype=start[name].dtype)
        if v.numel() != start[name][0].numel():
            raise ValueError(f"init value for {name} has {v.numel()} entries, expected {start[name][0].numel()}")
        start[name] = v.reshape(start[name].shape[1:]).expand_as(start[name]).clone()
    return start


def random_start(model, Y: torch.Tensor, seed: int) -> dict:
    """One random start per data set, Y (R, n): gate and expert parameters ~ N(0, 1/d)
    (tau ~ N(0, 1)), variances at the sample variance of y times exp(N(0, 1))."""
    R = Y.shape[0]
    gen = torch.Generator().manual_seed(seed)
    start = stack_params(model, R)
    scale = start["gate.beta"].shape[-1] ** -0.5 if "gate.beta" in start else 1.0
    for name, v in start.items():
        z = torch.randn(v.shape, generator=gen, dtype=torch.float64)
        kind = param_kind(name)
        if kind == "nu":
            start[name] = Y.var(dim=1).cpu().to(torch.float64).reshape(v.shape) * z.exp()
        else:
            start[name] = z if kind == "tau" else scale * z
    return start
