"""Degenerate fits: a prompt that explains a handful of observations.

A mixture's likelihood is unbounded: a prompt whose gate opens on a few observations and whose
expert passes through them gains without limit as its variance shrinks, and a fit on small data
(or a fit of a prompt that is not there) can end on such a spike, held only by the variance's
lower bound. A prompt is flagged when its variance ended on a bound below the pre-trained
component's variance, or when its gate mass sum_i w_k(x_i) is below its number of parameters
plus one (it can fit that many observations exactly)."""
import torch


def prompt_sizes(spec) -> list:
    """Trainable parameters per prompt component (its expert's and its variance)."""
    return [sum(p.numel() for p in c.parameters() if p.requires_grad) for c in spec.prompts]


def degeneracy(model, names_at_bound: list, X: torch.Tensor, sizes: list) -> list:
    """Reasons (strings, [] if none) why one fitted ``model`` is degenerate; X (n, d) its inputs,
    ``names_at_bound`` its parameters on a bound, ``sizes`` from ``prompt_sizes``."""
    nu0 = float(model.pretrained.nu.detach())
    with torch.no_grad():
        mass = model.gate_probs(X)[:, 1:].sum(0)  # (K,) expected observations per prompt
    reasons = []
    for k, (prompt, p) in enumerate(zip(model.prompts, sizes)):
        if f"prompts.{k}.nu" in names_at_bound and float(prompt.nu.detach()) < nu0:
            reasons.append(f"prompt {k}'s variance {float(prompt.nu.detach()):.3g} is on its lower bound")
        if float(mass[k]) < p + 1:
            reasons.append(f"prompt {k}'s gate opens on about {float(mass[k]):.2g} observations, "
                           f"fewer than its {p} parameters + 1")
    return reasons
