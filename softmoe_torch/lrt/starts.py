"""Where the alternative's fit of a bootstrap test starts, besides the estimator's own policy: at
the null, in the spirit of Chen & Li's EM test (2009), so that a few iterations find a prompt near
the null instead of spending themselves emptying the gate from a random start.

- ``anchored_starts``: the contamination test's (H0 known): each prompt at the pre-trained expert
  and variance, the gate's slopes 0 and its intercept on a small grid;
- ``split_starts``: the prompts test's (H0 fitted, per data set): one component of the fitted null
  split in two, every start exactly the fitted null."""

import math

import torch

from ..model.mixture import ContaminatedMoE
from ..model.names import expert_prefix, variance_name

STARTS = ("policy", "anchored")
ANCHOR_TAUS = (-2.0, 0.0, 2.0)  # the gate intercepts of the anchored starts
SPLITS = (0.1, 0.3, 0.5)  # the share of a null component's gate weight the new prompt takes (Chen & Li's grid)


def anchored_starts(model: ContaminatedMoE, taus=ANCHOR_TAUS) -> list:
    """Starts of ``model``'s prompts and gate at the null: every prompt's expert at the pre-trained
    expert's parameters (same names and shapes needed) and its variance at the pre-trained one's, the
    gate's slopes 0 and its intercepts at each value of ``taus``: one start {name: value} per value."""
    f0 = dict(model.pretrained.expert.named_parameters())
    start = {}
    for k, prompt in enumerate(model.prompts):
        own = dict(prompt.expert.named_parameters())
        if set(own) != set(f0) or any(own[n].shape != f0[n].shape for n in own):
            raise ValueError(
                f"anchored starts put each prompt's expert at the pre-trained expert's parameters, but prompt {k}'s "
                f"expert has {sorted(own)} and the pre-trained one {sorted(f0)}; use the estimator's own starts"
            )
        start.update({f"{expert_prefix(k)}{n}": f0[n].detach().clone() for n in own})
        start[variance_name(k)] = model.pretrained.nu.detach().clone()
    gate = dict(model.gate.named_parameters())
    slopes = {f"gate.{n}": torch.zeros_like(p.detach()) for n, p in gate.items() if n != "tau"}
    return [{**start, **slopes, "gate.tau": torch.full_like(gate["tau"].detach(), float(t))} for t in taus]


def split_starts(null: dict, model: ContaminatedMoE, splits=SPLITS) -> list:
    """Starts of ``model`` (the null's K prompts and one more) at each data set's fitted null ``null``
    ({name: (R, ...)}, a FitResults' ``params``): for every component a of the null (the pre-trained one or a prompt)
    and share pi in ``splits``, the new prompt is a copy of a (its expert; for the pre-trained one, its
    expert and variance) taking the share pi of a's gate weight, everything else as fitted: the
    mixture is then exactly the fitted null (for a = the pre-trained component, when the prompts'
    density family is f0's; otherwise the prompt of its family closest to f0, as ``anchored_starts``).
    The split of Chen & Li's EM test. One start {name: (R, ...)} per (a, pi): (K + 1) x 3."""
    K = len(model.prompts) - 1
    fitted = {name: value.to(torch.float64) for name, value in null.items()}
    R = next(iter(fitted.values())).shape[0]
    new = f"prompts.{K}."
    names = [n for n in model.trainable_parameters() if n.startswith(new)]
    f0 = dict(model.pretrained.named_parameters())
    if {n[len(new) :] for n in names} != set(f0) or "gate.beta" not in fitted:
        raise ValueError(
            "split starts copy a null component into the new prompt: every prompt needs the pre-trained "
            "component's parameter names and a softmax gate (beta, tau); use the estimator's own starts"
        )
    beta, tau = fitted["gate.beta"], fitted["gate.tau"]  # (R, K, d), (R, K)
    out = []
    for a in range(K + 1):
        for pi in splits:
            start = dict(fitted)
            if a == 0:  # the reference: its logit stays 0, so every other logit moves by -log(1 - pi)
                for name in names:
                    own = name[len(new) :]
                    start[name] = f0[own].detach().to(torch.float64).expand(R, *f0[own].shape).clone()
                new_beta, new_tau = torch.zeros_like(beta[:, :1]), torch.full_like(tau[:, :1], math.log(pi / (1 - pi)))
                old_tau = tau - math.log(1 - pi)
            else:
                for name in names:
                    start[name] = fitted[f"prompts.{a - 1}." + name[len(new) :]].clone()
                new_beta, new_tau = beta[:, a - 1 : a], tau[:, a - 1 : a] + math.log(pi)
                old_tau = tau.clone()
                old_tau[:, a - 1] += math.log(1 - pi)
            start["gate.beta"] = torch.cat([beta, new_beta], dim=1)
            start["gate.tau"] = torch.cat([old_tau, new_tau], dim=1)
            out.append(start)
    return out


def given_starts(model: ContaminatedMoE, starts: str):
    """The contamination test's starts: None for the estimator's own policy, else the anchored ones."""
    if starts not in STARTS:
        raise ValueError(f"starts must be one of {', '.join(STARTS)}, got {starts!r}")
    return anchored_starts(model) if starts == "anchored" else None
