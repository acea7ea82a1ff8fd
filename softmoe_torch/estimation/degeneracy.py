"""Degenerate fits: a trainable component that explains a handful of observations.

A mixture's likelihood is unbounded: a component whose gate opens on a few observations and whose
expert passes through them gains without limit as its variance shrinks, and a fit on small data
(or a fit of a prompt that is not there) can end on such a spike, held only by the variance's
lower bound. A trainable component is flagged when its variance ended on a bound below the
largest variance of the other components, or when its gate mass sum_i w_k(x_i) is below its
number of parameters plus one (it can fit that many observations exactly)."""

import torch

from ..model.mixture import ContaminatedMoE


def trainable_sizes(spec) -> dict:
    """{component index: its number of trainable parameters (expert's and variance)} over the
    components that have any."""
    sizes = {k: sum(p.numel() for p in c.parameters() if p.requires_grad) for k, c in enumerate(spec.components)}
    return {k: p for k, p in sizes.items() if p}


def _label(model, k: int) -> str:
    return f"prompt {k - 1}" if isinstance(model, ContaminatedMoE) else f"component {k}"


def degeneracy(model, names_at_bound: list, X: torch.Tensor, sizes: dict) -> list:
    """Reasons (strings, [] if none) why one fitted ``model`` is degenerate; X (n, d) its inputs,
    ``names_at_bound`` its parameters on a bound, ``sizes`` from ``trainable_sizes``."""
    nus = [float(c.nu.detach()) for c in model.components]
    names = model.component_names()
    with torch.no_grad():
        mass = model.gate_probs(X).sum(0)  # (K,) expected observations per component
    reasons = []
    for k, p in sizes.items():
        others = max(nu for j, nu in enumerate(nus) if j != k)
        if f"{names[k]}.nu" in names_at_bound and nus[k] < others:
            reasons.append(f"{_label(model, k)}'s variance {nus[k]:.3g} is on its lower bound")
        if float(mass[k]) < p + 1:
            reasons.append(
                f"{_label(model, k)}'s gate opens on about {float(mass[k]):.2g} observations, "
                f"fewer than its {p} parameters + 1"
            )
    return reasons
