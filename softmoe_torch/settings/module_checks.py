"""Probe a built mixture before fitting: the usual plug-in mistakes become one-line ``ValueError``s."""

import torch

from ..errors import module_name, one_line
from ..model.mixture import ContaminatedMoE, MixtureOfExperts


def check_experts(model: ContaminatedMoE | MixtureOfExperts, dim: int, n: int = 16) -> None:
    """Evaluate every expert on a probe batch x (n, dim) ~ N(0, I), plain and under ``torch.vmap``
    (the fit driver needs both), and the gate; ValueError unless each expert returns finite means
    of shape (n,) and the gate log-weights of shape (n, K) for the model's K components."""
    ref = next(model.parameters())
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(ref)
    if isinstance(model, ContaminatedMoE):
        named = [("pre-trained expert", model.pretrained.expert)]
        named += [(f"prompt expert {k}", p.expert) for k, p in enumerate(model.prompts)]
    else:
        named = [(f"expert of component {k}", c.expert) for k, c in enumerate(model.components)]
    for role, expert in named:
        what = f"the {role} {module_name(expert)}"
        try:
            with torch.no_grad():
                out = expert(x)
        except Exception as err:
            raise ValueError(f"{what} failed on x of shape {tuple(x.shape)}: {one_line(err)}") from None
        if not isinstance(out, torch.Tensor) or out.shape != (n,):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{what} must map x of shape ({n}, {dim}) to means of shape ({n},), got {got}")
        if not torch.isfinite(out).all():
            raise ValueError(f"{what} returned non-finite means (NaN or inf) on x ~ N(0, I)")
        try:
            with torch.no_grad():
                torch.vmap(expert)(x[None])
        except Exception as err:
            raise ValueError(f"{what} does not run under torch.vmap, which fitting needs: {one_line(err)}") from None
    K = len(model.components) - 1
    try:
        with torch.no_grad():
            shape = tuple(model.gate(x).shape)
    except Exception as err:
        raise ValueError(
            f"the gate {module_name(model.gate)} failed on x of shape {tuple(x.shape)}: {one_line(err)}"
        ) from None
    if shape != (n, K + 1):
        raise ValueError(
            f"the gate {module_name(model.gate)} must give log-weights of shape ({n}, {K + 1}) for "
            f"{K + 1} components, got {shape}: its n_prompts must be the number of components less one"
        )
