"""Starting points {name: (R, *shape)} for the fitting driver, by policy:

- ``near_truth``: the paper's protocol, truth plus a seeded perturbation of size ``scale``
  (additive for real parameters, multiplicative exp(scale * z) for positive ones); a truth with
  fewer components than the model (an over-specified fit) is first spread over the model's
  components (``spread_truth``);
- ``random``: seeded random starts needing no truth (``n_init`` of them; the best fit is kept).

Each parameter's domain is the one its module declares (``params.declared_constraint``)."""

import math

import torch
from torch.distributions import constraints

from .params import declared_constraint, stack_params

POLICIES = ("near_truth", "random")


def _positive(model, name) -> bool:
    return declared_constraint(model, name) is constraints.positive


def spread_truth(model, truth: dict, gen: torch.Generator) -> dict:
    """A truth of k* components {name: tensor} as values of every trainable parameter of ``model``
    (K >= k* components, softmax or constant gate, component 0 the gate's reference): frozen
    components and component 0 keep their true counterpart; every other component is assigned at
    random to a true trainable component, redrawn until each true one has at least one. A cell of
    m fitted components shares its true component's gate weight (each gets its logit - log m), and
    the logits are translated so that component 0's is 0 again (the same mixture)."""
    names = model.component_names()
    trainable = {k for k, c in enumerate(model.components) if any(p.requires_grad for p in c.parameters())}
    true = sorted({k for k, name in enumerate(names) if any(key.startswith(name + ".") for key in truth)})
    if not set(true) <= trainable or any(k not in trainable for k in range(len(true))):
        raise ValueError("near_truth: the truth must give the model's first k* components (its trainable ones)")
    gate = [key[len("gate.") :] for key in truth if key.startswith("gate.")]  # in the truth's order: the starts'
    # random draws follow it, so a set here made them depend on the process's string hashing (PYTHONHASHSEED)
    if not set(gate) <= {"tau", "beta"}:
        raise ValueError("near_truth with more components than the truth needs a softmax or constant gate (tau, beta)")
    fixed = {k: k for k in range(len(names)) if k not in trainable or k == 0}
    free = [k for k in sorted(trainable) if k not in fixed]
    open_ = [j for j in true if j not in fixed.values()]
    while True:
        draw = torch.randint(len(true), (len(free),), generator=gen).tolist()
        assign = {**fixed, **{k: true[j] for k, j in zip(free, draw)}}
        if set(open_) <= set(assign.values()):
            break
    out = {}
    for k in sorted(trainable):
        for key, value in truth.items():
            if key.startswith(names[assign[k]] + "."):
                out[names[k] + key[len(names[assign[k]]) :]] = value.clone()
    size = {j: sum(1 for v in assign.values() if v == j) for j in set(assign.values())}
    logits = {
        name: [
            torch.zeros_like(truth[f"gate.{name}"][0])
            if assign[k] == 0
            else truth[f"gate.{name}"][assign[k] - 1].clone()
            for k in range(len(names))
        ]
        for name in gate
    }
    logits["tau"] = [t - math.log(size[assign[k]]) for k, t in enumerate(logits["tau"])]
    for name, values in logits.items():
        out[f"gate.{name}"] = torch.stack([v - values[0] for v in values[1:]])
    return out


def near_truth(model, truth: dict, R: int, scale: float, seed: int) -> dict:
    """truth {name: tensor} -> R perturbed copies {name: (R, *shape)}, float64; a truth of fewer
    components than the model is spread over them first (``spread_truth``, one draw per call)."""
    gen = torch.Generator().manual_seed(seed)
    if set(truth) != set(model.trainable_parameters()):
        truth = spread_truth(model, {k: v.to(torch.float64) for k, v in truth.items()}, gen)
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


def starting_points(
    model, Y: torch.Tensor, policy: str, seed_of, truth: dict | None = None, scale: float = 0.1, n_init: int = 1
) -> list:
    """A list of init dicts {name: (R, ...)}, one per start (``n_init`` of them), for data Y (R, n).
    seed_of(i, j) -> seed of start i of replication j, so that a replication's starts do not
    depend on which others are fitted beside it."""
    R = Y.shape[0]
    if policy == "near_truth":
        if truth is None:
            raise ValueError("init.policy=near_truth needs the true parameters; on real data use init=random")
        return [_stack([near_truth(model, truth, 1, scale, seed_of(i, j)) for j in range(R)]) for i in range(n_init)]
    if policy == "random":
        if n_init < 1:
            raise ValueError(f"init.n_init must be at least 1, got {n_init}")
        return [_stack([random_start(model, Y[j : j + 1], seed_of(i, j)) for j in range(R)]) for i in range(n_init)]
    raise ValueError(f"unknown init.policy {policy!r}; use {' or '.join(POLICIES)}")


def _stack(per_rep: list) -> dict:
    """One-replication init dicts {name: (1, ...)} -> one dict {name: (R, ...)}."""
    return {k: torch.cat([p[k] for p in per_rep]) for k in per_rep[0]}
