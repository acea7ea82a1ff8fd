"""Batched parameters: the trainable parameters of a model carry a leading replication axis R,
are flattened to one unconstrained vector per replication for optimization, and are mapped back
through transforms that keep variances positive and honour optional box bounds."""
import math

import torch
from torch.distributions import transforms as T
from torch.func import functional_call


def param_kind(name: str) -> str:
    """Which bound applies to a trainable parameter: 'beta', 'tau', 'nu' or 'expert'."""
    if name.startswith("gate."):
        return name.split(".")[-1]
    if name.endswith(".nu"):
        return "nu"
    return "expert"


def _transform(kind: str, bound):
    """Map from R to the parameter's domain: identity/exp, or a sigmoid onto the bounds."""
    if kind == "nu":
        if bound is None:
            return T.ExpTransform()
        lo, hi = (math.log(float(b)) for b in bound)
        return T.ComposeTransform([T.SigmoidTransform(), T.AffineTransform(lo, hi - lo), T.ExpTransform()])
    if bound is None:
        return T.identity_transform
    b = float(bound)
    return T.ComposeTransform([T.SigmoidTransform(), T.AffineTransform(-b, 2 * b)])


def _interval(kind: str, bound):
    if bound is None:
        return (0.0, math.inf) if kind == "nu" else (-math.inf, math.inf)
    return (float(bound[0]), float(bound[1])) if kind == "nu" else (-float(bound), float(bound))


class ParamSpace:
    """Layout of a model's trainable parameters as flat unconstrained vectors u of shape (R, p).

    ``bounds`` maps 'beta', 'tau', 'expert' to a half-width B (the box [-B, B]) and 'nu' to
    [lo, hi]; a missing or null entry leaves that parameter unbounded (nu stays positive)."""

    def __init__(self, model, bounds=None):
        bounds = dict(bounds or {})
        unknown = set(bounds) - {"beta", "tau", "expert", "nu"}
        if unknown:
            raise ValueError(f"unknown bound keys {sorted(unknown)}; use beta, tau, expert, nu")
        trainable = model.trainable_parameters()
        self.names = list(trainable)
        self.shapes = [tuple(p.shape) for p in trainable.values()]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.kinds = [param_kind(n) for n in self.names]
        self.transforms = [_transform(k, bounds.get(k)) for k in self.kinds]
        self.intervals = [_interval(k, bounds.get(k)) for k in self.kinds]
        self.dim = sum(self.sizes)

    def to_natural(self, u: torch.Tensor) -> dict:
        """u (R, p) -> {name: (R, *shape)} in the parameters' own domains."""
        out, start = {}, 0
        for name, shape, size, tr in zip(self.names, self.shapes, self.sizes, self.transforms):
            out[name] = tr(u[:, start : start + size]).reshape(u.shape[0], *shape)
            start += size
        return out

    def to_unconstrained(self, params: dict) -> torch.Tensor:
        """{name: (R, *shape)} -> u (R, p); raises ValueError for values outside the bounds."""
        pieces = []
        for name, (lo, hi), tr in zip(self.names, self.intervals, self.transforms):
            v = params[name]
            if not bool(((v > lo) & (v < hi)).all()):
                raise ValueError(
                    f"starting value of {name} is outside its bounds ({lo:g}, {hi:g}); "
                    "widen fit.bounds or change the initialization"
                )
            pieces.append(tr.inv(v).reshape(v.shape[0], -1))
        return torch.cat(pieces, dim=1)


    def at_bound(self, params: dict, rel: float = 1e-3) -> list:
        """Per replication, the names of parameters with an entry within ``rel`` of the box width
        (a relative distance on the log scale for nu) of a bound: ['gate.tau', ...] or []."""
        R = next(iter(params.values())).shape[0]
        hits = [[] for _ in range(R)]
        for name, kind, (lo, hi) in zip(self.names, self.kinds, self.intervals):
            if not (math.isfinite(lo) and math.isfinite(hi)):
                continue
            v = params[name].reshape(R, -1).double()
            if kind == "nu":
                v, lo, hi = v.log(), math.log(lo), math.log(hi)
            near = ((v - lo) <= rel * (hi - lo)) | ((hi - v) <= rel * (hi - lo))
            for r in near.any(dim=1).nonzero().squeeze(1).tolist():
                hits[r].append(name)
        return hits


def batched_log_joint(model, params: dict, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Evaluate the model once per replication: params {name: (R, ...)}, X (R, n, d), Y (R, n)
    -> log joint (R, n, K+1). Parameters not in ``params`` (the frozen ones) are shared."""

    def one(p, x, y):
        return functional_call(model, p, (x, y), {"joint": True})

    return torch.vmap(one)(params, X, Y)


def stack_params(model, R: int) -> dict:
    """The model's current trainable values repeated R times: {name: (R, *shape)}."""
    return {n: p.detach().expand(R, *p.shape).clone() for n, p in model.trainable_parameters().items()}
