"""Batched parameters: the trainable parameters of a model carry a leading replication axis R,
are flattened to one unconstrained vector per replication for optimization, and are mapped back
through ``torch.distributions.biject_to`` of the domain each module declares.

A module declares its parameters' domains in ``param_constraints`` (a dict name -> constraint,
as ``torch.distributions`` does with ``arg_constraints``); undeclared parameters are real.
Bounds (the theory's compact parameter space) apply per domain: ``real`` parameters get the box
[-B, B], ``positive`` ones [lo, hi] on the log scale; a parameter's own name (or a prefix of it)
overrides its domain's default."""

import math

import torch
from torch.distributions import constraints
from torch.distributions import transforms as T
from torch.distributions.constraint_registry import biject_to
from torch.func import functional_call

DOMAINS = ("real", "positive")


def declared_constraint(model, name: str):
    """The constraint that the module owning parameter ``name`` declares for it (real if none)."""
    owner, _, leaf = name.rpartition(".")
    return getattr(model.get_submodule(owner), "param_constraints", {}).get(leaf, constraints.real)


def _domain(constraint) -> str | None:
    if constraint is constraints.real:
        return "real"
    if constraint is constraints.positive:
        return "positive"
    return None  # another declared domain (an interval, ...): already compact or its own bijection


def _flatten(bounds: dict, prefix: str = "") -> dict:
    """Nested bounds {gate: {tau: 20}} -> {'gate.tau': 20}; numbers and [lo, hi] lists are leaves."""
    out = {}
    for key, value in bounds.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _interval(domain: str, bound, name: str):
    """(lo, hi) of a bounded parameter; a number B means [-B, B] for a real parameter."""
    if domain == "real" and not isinstance(bound, (list, tuple)):
        return -float(bound), float(bound)
    lo, hi = (float(b) for b in bound)
    if not lo < hi or (domain == "positive" and lo <= 0):
        raise ValueError(f"bad bound for {name}: {list(bound)}; need lo < hi (and lo > 0 for a positive parameter)")
    return lo, hi


def _bijection(domain, constraint, interval):
    """Map from R onto the parameter's (bounded) domain."""
    if interval is None:
        return biject_to(constraint)
    lo, hi = interval
    if domain == "positive":
        return T.ComposeTransform([biject_to(constraints.interval(math.log(lo), math.log(hi))), T.ExpTransform()])
    return biject_to(constraints.interval(lo, hi))


STAGE_FUNCTIONS = {T.SigmoidTransform: 1, T.ExpTransform: 2}  # a stage's f: 0 the identity, 1 sigmoid, 2 exp


def _stages(transform):
    """An element-wise transform as stages y <- loc + scale * f(y) [(f, loc, scale), ...], or None
    where it holds a map other than sigmoid, exp and (scalar) affine ones."""
    if isinstance(transform, T.ComposeTransform):
        parts = [_stages(part) for part in transform.parts]
        return None if any(p is None for p in parts) else _join(sum(parts, []))
    if isinstance(transform, T.AffineTransform) and all(
        isinstance(v, (int, float)) for v in (transform.loc, transform.scale)
    ):
        return [(0, transform.loc, transform.scale)]
    if type(transform) in STAGE_FUNCTIONS:
        return [(STAGE_FUNCTIONS[type(transform)], 0.0, 1.0)]
    return None


def _join(stages: list) -> list:
    """Stages with each identity stage folded into the one before (an affine map after another map)."""
    out = []
    for f, loc, scale in stages:
        if f == 0 and out:
            g, loc0, scale0 = out.pop()
            out.append((g, loc + scale * loc0, scale * scale0))
        else:
            out.append((f, loc, scale))
    return out


class Stages:
    """The transforms of p coordinates as S stages each (identity stages pad the shorter ones):
    ``derivatives(x, order)`` (R, p) -> (y, dy/dx, d2y/dx2) up to ``order``, all (R, p), by the chain rule
    (loc + scale f(g))' = scale f'(g) g' and '' = scale (f''(g) g'^2 + f'(g) g'') in a few
    element-wise operations over all coordinates at once. A sigmoid's value is clamped as torch's
    SigmoidTransform clamps it, its derivatives are not: a parameter on its bound keeps a nonzero
    slope (autograd through the clamp gave zero there). Rows are padded to ``LANES`` columns so
    that every coordinate takes the same vectorized code path whatever R: a batched fit's maps
    equal a single fit's bit for bit (vectorized and scalar exp and sigmoid round differently)."""

    LANES = 32

    def __init__(self, per_coordinate: list):
        S = max((len(st) for st in per_coordinate), default=0)
        self.p = len(per_coordinate)
        width = -(-self.p // self.LANES) * self.LANES
        padded = [st + [(0, 0.0, 1.0)] * (S - len(st)) for st in per_coordinate]
        padded += [[(0, 0.0, 1.0)] * S] * (width - self.p)
        table = torch.tensor([[list(stage) for stage in st] for st in padded], dtype=torch.float64)
        table = table.reshape(width, S, 3)
        self.f, self.loc, self.scale = table[..., 0].long(), table[..., 1], table[..., 2]  # (width, S)
        self._tables = {}  # (device, dtype) -> per stage what ``derivatives`` reads

    def _table(self, like: torch.Tensor) -> list:
        """Per stage (the masks f = 1 and f = 2, loc, scale), each (width,), on ``like``'s device and dtype."""
        key = (like.device, like.dtype)
        if key not in self._tables:
            f, loc, scale = self.f.to(like.device), self.loc.to(like), self.scale.to(like)
            self._tables[key] = [(f[:, s] == 1, f[:, s] == 2, loc[:, s], scale[:, s]) for s in range(f.shape[1])]
        return self._tables[key]

    def derivatives(self, x: torch.Tensor, order: int = 2):
        """(y, dy/dx or None below ``order`` 1, d2y/dx2 or None below ``order`` 2), each (R, p)."""
        y = x.new_zeros(x.shape[0], self.f.shape[0])
        y[:, : self.p] = x
        d1 = torch.ones_like(y) if order >= 1 else None
        d2 = torch.zeros_like(y) if order >= 2 else None
        tiny, eps = torch.finfo(x.dtype).tiny, torch.finfo(x.dtype).eps
        for sigmoid, exp, loc, scale in self._table(x):
            sig = torch.sigmoid(y)
            e = torch.exp(torch.where(exp, y, 0.0))
            value = torch.where(sigmoid, sig.clamp(tiny, 1 - eps), torch.where(exp, e, y))  # as SigmoidTransform
            if order >= 1:
                comp = torch.sigmoid(-y)  # 1 - sigmoid without its cancellation at large y
                both = sig * comp
                slope = torch.where(sigmoid, both, torch.where(exp, e, 1.0))
                if order >= 2:
                    curve = torch.where(sigmoid, both * (comp - sig), torch.where(exp, e, 0.0))
                    d2 = scale * (curve * d1 * d1 + slope * d2)
                d1 = scale * slope * d1
            y = loc + scale * value
        return tuple(None if t is None else t[:, : self.p] for t in (y, d1, d2))


def autograd_derivatives(transform, x: torch.Tensor):
    """(y, dy/dx, d2y/dx2) of any element-wise transform at x, by autograd."""
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        y = transform(xx)
        (d1,) = torch.autograd.grad(y.sum(), xx, create_graph=True)
        d2 = torch.autograd.grad(d1.sum(), xx)[0] if d1.requires_grad else torch.zeros_like(x)
    return y.detach(), d1.detach(), d2


class ParamSpace:
    """Layout of a model's trainable parameters as flat unconstrained vectors u of shape (R, p).

    ``bounds``: {'real': B, 'positive': [lo, hi], <parameter name or prefix>: bound}; a missing or
    null entry leaves that domain or parameter unbounded (positive parameters stay positive)."""

    def __init__(self, model, bounds=None):
        flat = _flatten(dict(bounds or {}))
        trainable = model.trainable_parameters()
        self.names = list(trainable)
        unknown = [k for k in flat if k not in DOMAINS and not any(n == k or n.startswith(k + ".") for n in self.names)]
        if unknown:
            raise ValueError(
                f"unknown bound keys {sorted(unknown)}; use {', '.join(DOMAINS)} or a parameter name "
                f"such as {self.names[-1]}"
            )
        self.shapes = [tuple(p.shape) for p in trainable.values()]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.constraints = [declared_constraint(model, n) for n in self.names]
        self.domains = [_domain(c) for c in self.constraints]
        self.intervals = []
        for name, domain in zip(self.names, self.domains):
            keys = [k for k in flat if name == k or name.startswith(k + ".")]
            key = max(keys, key=len) if keys else domain
            bound = flat.get(key)
            if bound is not None and domain is None:
                raise ValueError(f"bounds apply to real or positive parameters; {name} declares its own domain")
            self.intervals.append(None if bound is None else _interval(domain, bound, name))
        self.transforms = [_bijection(d, c, i) for d, c, i in zip(self.domains, self.constraints, self.intervals)]
        offsets = [0, *torch.tensor(self.sizes).cumsum(0).tolist()]
        self.slices = {n: slice(a, b) for n, a, b in zip(self.names, offsets[:-1], offsets[1:])}
        self.dim = sum(self.sizes)
        stages = [_stages(tr) for tr in self.transforms]
        self.stages = (
            None
            if any(st is None for st in stages)
            else Stages([st for st, size in zip(stages, self.sizes) for _ in range(size)])
        )

    def to_natural(self, u: torch.Tensor) -> dict:
        """u (R, p) -> {name: (R, *shape)} in the parameters' own domains."""
        return {
            n: tr(u[:, self.slices[n]]).reshape(u.shape[0], *s)
            for n, s, tr in zip(self.names, self.shapes, self.transforms)
        }

    def natural_flat(self, u: torch.Tensor, order: int = 1):
        """u (R, p) -> (theta (R, p), dtheta/du (R, p), d2theta/du2 (R, p) or None); the maps are
        element-wise, so their derivatives are too: analytic (``Stages``) where every map is made of
        sigmoid, exp and affine maps (those of ``biject_to`` and the bounds), else by autograd.
        ``order`` 1 leaves out the second derivative, ``order`` 0 both (None)."""
        if self.stages is not None:
            return self.stages.derivatives(u, order)
        pieces = [autograd_derivatives(tr, u[:, self.slices[n]]) for n, tr in zip(self.names, self.transforms)]
        theta, d1, d2 = (torch.cat(parts, 1) for parts in zip(*pieces))
        return theta, d1 if order >= 1 else None, d2 if order >= 2 else None

    def to_unconstrained(self, params: dict) -> torch.Tensor:
        """{name: (R, *shape)} -> u (R, p); raises ValueError for values outside the domain or bounds."""
        pieces = []
        for name, c, interval, tr in zip(self.names, self.constraints, self.intervals, self.transforms):
            v = params[name]
            lo, hi = interval or (-math.inf, math.inf)
            if not bool((c.check(v) & (v > lo) & (v < hi)).all()):
                where = f"its bounds ({lo:g}, {hi:g})" if interval else f"its domain ({c})"
                raise ValueError(
                    f"starting value of {name} is outside {where}; widen fit.bounds or change the initialization"
                )
            pieces.append(tr.inv(v).reshape(v.shape[0], -1))
        return torch.cat(pieces, dim=1)

    def at_bound(self, params: dict, rel: float = 1e-3) -> list:
        """Per replication, the names of parameters with an entry within ``rel`` of the box width
        (a relative distance on the log scale for positive parameters) of a bound: ['gate.tau', ...] or []."""
        R = next(iter(params.values())).shape[0]
        hits = [[] for _ in range(R)]
        for name, domain, interval in zip(self.names, self.domains, self.intervals):
            if interval is None:
                continue
            lo, hi = interval
            v = params[name].reshape(R, -1).double()
            if domain == "positive":
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
