"""The mean squared residual F(u) = RSS / n of R regression mixtures of experts, as a function of
their flat parameters u (R, p), with what least squares needs of it: the residuals, the gradient,
and products with the Jacobian J = df/du (n, p) and its transpose.

Two implementations share one interface (``pack``, ``unpack``, ``value``, ``linearize``):

- ``StructuredLS``: affine-logit gates (``SoftmaxGate``, ``SigmoidGate``) and experts
  act(eta^T x + bias) with known act' (``AffineExpert`` and its subclasses). Every parameter
  enters through the features z = (x, 1): df/du = C_c(x) z for a per-sample coefficient C_c of
  each channel c (an expert's or a gate's row), so J v is one batched matmul and a sum over
  channels, and J^T w one batched matmul: a Gauss-Newton product costs two passes over X;
- ``GenericLS``: any experts and gate, through ``torch.func`` (vmap of functional_call; jvp, vjp).

``make_ls_objective`` picks the structured one whenever the model allows it."""

from typing import NamedTuple

import torch
from torch.func import functional_call, jvp, vjp

from ..model.experts import AffineExpert
from ..model.gates import SigmoidGate, SoftmaxGate
from .evaluation import defines_derivatives, rows


class Linearization(NamedTuple):
    """F (m,), grad (m, p) of F, residuals r (m, n) = y - f; ``jvp(v (m, p)) -> J v (m, n)``,
    ``vjp(w (m, n)) -> J^T w (m, p)``, ``hvp(v (m, p)) -> (Hessian of F) v (m, p)``; ``diag`` (m, p):
    the diagonal of J^T J / n, or None."""

    F: torch.Tensor
    grad: torch.Tensor
    r: torch.Tensor
    jvp: object
    vjp: object
    hvp: object
    diag: torch.Tensor | None


def structured_supported(model) -> bool:
    """Whether ``StructuredLS`` can evaluate ``model`` (see the module docstring): one expert class,
    a subclass of ``AffineExpert`` with its own activation derivatives, every parameter trainable."""
    experts, gate = list(model.experts), model.gate
    kind = type(experts[0])
    return (
        type(gate) in (SoftmaxGate, SigmoidGate)
        and all(type(e) is kind for e in experts)
        and issubclass(kind, AffineExpert)
        and defines_derivatives(kind)
        and all(p.requires_grad for p in model.parameters())
    )


class StructuredLS:
    """The structured path; X (R, n, d), Y (R, n). u packs, per replication, the rows
    [eta_k, bias_k] of the K experts, then [beta_j, tau_j] of the gate's rows: (K + G) x (d + 1)."""

    def __init__(self, model, X, Y):
        self.Y = Y
        self.Z = torch.cat([X, torch.ones_like(X[..., :1])], -1)  # (R, n, d + 1) features
        # both layouts (and the squares): J^T w as Zt @ (C w) is about 5x faster than (C w)^T @ Z at n = 1e5
        self.Zt = self.Z.transpose(1, 2).contiguous()
        self.Z2t = self.Zt * self.Zt
        self.inputs = self.Z  # what ``batch_grad`` takes, per sample
        self.K, self.G = len(model.experts), model.gate.tau.shape[0]
        self.softmax = isinstance(model.gate, SoftmaxGate)
        self.activation = type(model.experts[0]).activation_derivatives
        self.dim = (self.K + self.G) * self.Z.shape[-1]

    def pack(self, params: dict) -> torch.Tensor:
        """{name: (R, *shape)} -> u (R, p)."""
        experts = [
            torch.cat([params[f"experts.{k}.eta"], params[f"experts.{k}.bias"][:, None]], 1) for k in range(self.K)
        ]
        gate = torch.cat([params["gate.beta"], params["gate.tau"][..., None]], 2)
        return torch.cat([torch.stack(experts, 1), gate], 1).flatten(1)

    def unpack(self, u: torch.Tensor) -> dict:
        """u (R, p) -> {name: (R, *shape)}."""
        P = u.reshape(u.shape[0], self.K + self.G, -1)
        out = {}
        for k in range(self.K):
            out[f"experts.{k}.eta"], out[f"experts.{k}.bias"] = P[:, k, :-1], P[:, k, -1]
        out["gate.beta"], out["gate.tau"] = P[:, self.K :, :-1], P[:, self.K :, -1]
        return out

    def forward(self, u, Z):
        """Fitted values f (m, n) and the channels' coefficients C (m, n, K + G) at u (m, p) on
        features Z (m, n, d + 1)."""
        lin = torch.bmm(Z, u.reshape(u.shape[0], self.K + self.G, -1).transpose(1, 2))  # (m, n, K + G)
        h, h1, _ = self.activation(lin[..., : self.K])
        if self.softmax:
            g = torch.softmax(torch.cat([torch.zeros_like(lin[..., :1]), lin[..., self.K :]], -1), -1)
            f = (g * h).sum(-1)
            gate = g[..., 1:] * (h[..., 1:] - f.unsqueeze(-1))
        else:
            g = torch.sigmoid(lin[..., self.K :])
            f = (g * h).sum(-1)
            gate = g * (1 - g) * h
        return f, torch.cat([g * h1, gate], -1)

    def value(self, u, idx) -> torch.Tensor:
        """F (m,) at u (m, p) of the data sets idx."""
        f, _ = self.forward(u, rows(self.Z, idx))
        return ((rows(self.Y, idx) - f) ** 2).mean(-1)

    def batch_grad(self, u, Z, y) -> torch.Tensor:
        """The gradient (m, p) of the mean squared residual over the samples Z (m, b, d + 1), y (m, b)."""
        f, C = self.forward(u, Z)
        return -2 * torch.bmm((C * (y - f).unsqueeze(-1)).transpose(1, 2), Z).flatten(1) / y.shape[1]

    def linearize(self, u, idx, diag: bool = True) -> Linearization:
        """The linearization at u (m, p) of the data sets idx; ``diag``: with the Gauss-Newton diagonal."""
        Z, Zt, y = rows(self.Z, idx), rows(self.Zt, idx), rows(self.Y, idx)
        f, C = self.forward(u, Z)
        n, m = y.shape[1], u.shape[0]
        r = y - f

        def transposed(W):  # sum_i W_ic z_i per channel c: (m, n, K + G) -> (m, p)
            return torch.bmm(Zt, W).transpose(1, 2).flatten(1)

        def jvp_(v):
            return (C * torch.bmm(Z, v.reshape(m, self.K + self.G, -1).transpose(1, 2))).sum(-1)

        def vjp_(w):
            return transposed(C * w.unsqueeze(-1))

        def hvp_(v):  # (2 / n) (J^T J v - sum_i r_i (d2 f_i) v): the second term by the tangent of C along v
            _, (df, dC) = jvp(lambda w: self.forward(w, Z), (u,), (v,))
            return 2 * transposed(C * df.unsqueeze(-1) - dC * r.unsqueeze(-1)) / n

        gn = torch.bmm(rows(self.Z2t, idx), C * C).transpose(1, 2).flatten(1) / n if diag else None
        return Linearization((r * r).mean(-1), -2 * vjp_(r) / n, r, jvp_, vjp_, hvp_, gn)


class GenericLS:
    """Any experts and gate, by ``torch.func``; u is the trainable parameters flattened in
    ``model.trainable_parameters()`` order. X (R, n, d), Y (R, n)."""

    def __init__(self, model, X, Y):
        self.model, self.X, self.Y = model, X, Y
        self.inputs = X  # what ``batch_grad`` takes, per sample
        trainable = model.trainable_parameters()
        self.names = list(trainable)
        self.shapes = [tuple(p.shape) for p in trainable.values()]
        self.sizes = [p.numel() for p in trainable.values()]
        self.dim = sum(self.sizes)

    def pack(self, params: dict) -> torch.Tensor:
        return torch.cat([params[n].reshape(params[n].shape[0], -1) for n in self.names], 1)

    def unpack(self, u: torch.Tensor) -> dict:
        parts = u.split(self.sizes, 1)
        return {n: p.reshape(u.shape[0], *s) for n, p, s in zip(self.names, parts, self.shapes)}

    def fitted(self, X):
        """u (m, p) -> f (m, n) on inputs X (m, n, d)."""

        def one(p, x):
            return functional_call(self.model, p, (x,))

        return lambda u: torch.vmap(one)(self.unpack(u), X)

    def value(self, u, idx) -> torch.Tensor:
        with torch.no_grad():
            f = self.fitted(rows(self.X, idx))(u)
        return ((rows(self.Y, idx) - f) ** 2).mean(-1)

    def batch_grad(self, u, X, y) -> torch.Tensor:
        """The gradient (m, p) of the mean squared residual over the samples X (m, b, d), y (m, b)."""
        f, back = vjp(self.fitted(X), u)
        return -2 * back(y - f)[0] / y.shape[1]

    def linearize(self, u, idx, diag: bool = True) -> Linearization:
        """The linearization at u (m, p) of the data sets idx (never with a diagonal here)."""
        fitted, y = self.fitted(rows(self.X, idx)), rows(self.Y, idx)
        f, back = vjp(fitted, u)
        f = f.detach()
        r, n = y - f, y.shape[1]

        def jvp_(v):
            return jvp(fitted, (u,), (v,))[1].detach()

        def vjp_(w):
            return back(w)[0].detach()

        def total(w):  # the sum over problems of F: its gradient holds each problem's own
            return ((y - fitted(w)) ** 2).mean(-1).sum()

        def hvp_(v):
            return jvp(torch.func.grad(total), (u,), (v,))[1].detach()

        return Linearization((r * r).mean(-1), -2 * vjp_(r) / n, r, jvp_, vjp_, hvp_, None)


def make_ls_objective(model, X, Y, structured: bool = True):
    """The structured objective where the model allows it (and ``structured``), else the generic one."""
    if structured and structured_supported(model):
        return StructuredLS(model, X, Y)
    return GenericLS(model, X, Y)


class BoxedLS:
    """An objective over the box lo <= theta <= hi (per entry of its layout; infinite bounds leave an
    entry free), in unconstrained variables u: theta = lo + (hi - lo) sigmoid(u) where bounded. The
    derivatives follow by the chain rule through this element-wise map; the gradient, and so the
    convergence contract's gtol, is in u. lo, hi (p,)."""

    def __init__(self, objective, lo: torch.Tensor, hi: torch.Tensor):
        self.objective, self.lo, self.hi = objective, lo, hi
        self.bounded = torch.isfinite(lo) & torch.isfinite(hi)
        self.width = torch.where(self.bounded, hi - lo, torch.ones_like(lo))
        self.dim, self.Y = objective.dim, objective.Y

    def _map(self, u):
        """theta (m, p), dtheta/du and d2theta/du2 (m, p) at u (m, p)."""
        s = torch.sigmoid(u)
        d1 = torch.where(self.bounded, self.width * s * (1 - s), torch.ones_like(u))
        d2 = torch.where(self.bounded, d1 * (1 - 2 * s), torch.zeros_like(u))
        return torch.where(self.bounded, self.lo + self.width * s, u), d1, d2

    def pack(self, params: dict) -> torch.Tensor:
        """{name: (R, *shape)} -> u (R, p); raises ValueError for a value outside its bounds."""
        theta = self.objective.pack(params)
        inside = ~self.bounded | ((theta > self.lo) & (theta < self.hi))
        if not bool(inside.all()):
            raise ValueError("a starting value is outside fit.bounds; widen fit.bounds or start inside them")
        share = ((theta - self.lo) / self.width).clamp(1e-300, 1 - 1e-16)
        return torch.where(self.bounded, torch.logit(share), theta)

    def unpack(self, u: torch.Tensor) -> dict:
        return self.objective.unpack(self._map(u)[0])

    def value(self, u, idx) -> torch.Tensor:
        return self.objective.value(self._map(u)[0], idx)

    def linearize(self, u, idx, diag: bool = True) -> Linearization:
        theta, d1, d2 = self._map(u)
        lin = self.objective.linearize(theta, idx, diag)
        return Linearization(
            lin.F,
            lin.grad * d1,
            lin.r,
            lambda v: lin.jvp(d1 * v),
            lambda w: d1 * lin.vjp(w),
            lambda v: d1 * lin.hvp(d1 * v) + lin.grad * d2 * v,
            None if lin.diag is None else lin.diag * d1 * d1,
        )
