"""Batched minimizers over flat unconstrained parameters u (R, p).

``minimize`` solves R independent problems at once: every replication has its own curvature
model, step length and stopping rule, so its trajectory is the one it would follow alone. The
search direction comes from a strategy: ``LBFGS`` (own history per replication), ``BFGS`` (own
inverse Hessian), ``Newton`` (the exact Hessian where positive definite, else BFGS) or
``SaddleFreeNewton`` (the exact Hessian, |H| where it is not positive definite). The step is a
backtracking Armijo line search with a trust cap on its max-norm; with a Hessian, a backtracking
trial is valued first and differentiated only where accepted. ``torch_lbfgs_one`` runs
``torch.optim.LBFGS`` (fresh, strong Wolfe) on a single problem.
"""

from dataclasses import dataclass

import torch

from .convergence import rounding
from .evaluation import Evaluation

C1 = 1e-4  # Armijo constant


def _even(M: torch.Tensor) -> torch.Tensor:
    """Matrices M (m, p, p) as they enter MKL's small solves and products: where p is odd, bordered to
    (p + 1, p + 1) by a last row and column of zeros but for max |M_ii| at the corner (so M's largest
    eigenvalue in size, and positive definiteness, stay). With odd p, the batched ``cholesky_solve``,
    ``eigh`` and matrix products give a row a result that depends on where it sits in the batch (13 x 13:
    about half the rows differ in the last bits from the same matrix alone); with even p they do not, so
    each problem's iterates do not depend on the problems beside it."""
    p = M.shape[-1]
    if p % 2 == 0:
        return M
    out = M.new_zeros(M.shape[0], p + 1, p + 1)
    out[:, :p, :p] = M
    out[:, p, p] = M.diagonal(dim1=1, dim2=2).abs().amax(1)
    return out


def _even_vector(v: torch.Tensor) -> torch.Tensor:
    """v (m, p) with a zero appended where p is odd (see ``_even``)."""
    return v if v.shape[-1] % 2 == 0 else torch.cat([v, v.new_zeros(v.shape[0], 1)], dim=1)


@dataclass
class SolverOptions:
    """An inner (EM M-step) solve stops when the relative change of its objective is below
    ``ftol`` or max |gradient| below ``gtol``, after at most ``max_iter`` iterations. Steps (in
    max-norm over u) are at most ``first_step`` before the first curvature update and ``max_step``
    after; ``history`` is the L-BFGS memory."""

    max_iter: int = 200
    ftol: float = 1e-12
    gtol: float = 1e-9
    max_ls: int = 40
    first_step: float = 1e-2
    max_step: float = 0.5
    history: int = 10


class LBFGS:
    """Limited-memory BFGS, one history of (s, y) pairs per replication."""

    order = 1

    def __init__(self, R, p, like, history=10):
        self.S = like.new_zeros(R, history, p)
        self.Y = like.new_zeros(R, history, p)
        self.count = torch.zeros(R, dtype=torch.long, device=like.device)

    def fresh(self, idx):
        return self.count[idx] == 0

    def reset(self, idx):
        self.count[idx] = 0

    def direction(self, idx, g, hess):
        """Two-loop recursion over each replication's stored pairs (newest first)."""
        S, Y, k = self.S[idx], self.Y[idx], self.count[idx]
        m = S.shape[1]
        q = g.clone()
        alphas = []
        for j in range(m):  # slot j holds the pair stored j updates ago
            valid = (j < k).to(g.dtype)
            s, y = S[:, j], Y[:, j]
            rho = valid / (s * y).sum(1).where(valid > 0, torch.ones_like(valid))
            a = rho * (s * q).sum(1)
            q = q - a[:, None] * y
            alphas.append((a, rho))
        y0, s0 = Y[:, 0], S[:, 0]
        gamma = torch.where(
            k > 0, (s0 * y0).sum(1) / (y0 * y0).sum(1).clamp_min(1e-300), torch.ones_like(k, dtype=g.dtype)
        )
        r = gamma[:, None] * q
        for j in reversed(range(m)):
            a, rho = alphas[j]
            b = rho * (Y[:, j] * r).sum(1)
            r = r + (a - b)[:, None] * S[:, j]
        return -r

    def update(self, idx, s, y, good):
        sel = idx[good]
        self.S[sel] = torch.roll(self.S[sel], 1, dims=1)
        self.Y[sel] = torch.roll(self.Y[sel], 1, dims=1)
        self.S[sel, 0], self.Y[sel, 0] = s[good], y[good]
        self.count[sel] = (self.count[sel] + 1).clamp(max=self.S.shape[1])


class BFGS:
    """Full-memory BFGS: one inverse-Hessian approximation (p, p) per replication."""

    order = 1

    def __init__(self, R, p, like, history=None):
        q = p + p % 2  # kept at an even size (see ``_even``): the padded coordinate never moves
        self.eye = torch.eye(q, dtype=like.dtype, device=like.device)
        self.H = self.eye.expand(R, q, q).clone()
        self.is_fresh = torch.ones(R, dtype=torch.bool, device=like.device)

    def fresh(self, idx):
        return self.is_fresh[idx]

    def reset(self, idx):
        self.H[idx] = self.eye
        self.is_fresh[idx] = True

    def direction(self, idx, g, hess):
        return -(self.H[idx] @ _even_vector(g).unsqueeze(-1)).squeeze(-1)[:, : g.shape[1]]

    def update(self, idx, s, y, good):
        sel = idx[good]
        s, y = _even_vector(s[good]), _even_vector(y[good])
        sy = (s * y).sum(1)
        H = torch.where(self.is_fresh[sel][:, None, None], (sy / (y * y).sum(1))[:, None, None] * self.eye, self.H[sel])
        rho = (1.0 / sy)[:, None, None]
        V = self.eye - rho * s.unsqueeze(2) * y.unsqueeze(1)
        self.H[sel] = V @ H @ V.transpose(1, 2) + rho * s.unsqueeze(2) * s.unsqueeze(1)
        self.is_fresh[sel] = False


class Newton(BFGS):
    """Newton's method with the exact Hessian where it is positive definite (near a maximum of
    the likelihood: quadratic convergence); elsewhere the BFGS direction, whose inverse-Hessian
    approximation is updated at every step either way (robust where the likelihood is not concave)."""

    order = 2
    value_first = False  # a first trial step is accepted most of the time: its Hessian is wanted at once

    def __init__(self, R, p, like, history=None):
        super().__init__(R, p, like)
        self.newton = torch.zeros(R, dtype=torch.bool, device=like.device)

    def fresh(self, idx):
        return super().fresh(idx) & ~self.newton[idx]

    def direction(self, idx, g, hess):
        chol, info = torch.linalg.cholesky_ex(_even(hess))
        pd = info == 0
        self.newton[idx] = pd
        d = super().direction(idx, g, hess)
        if pd.any():
            step = torch.cholesky_solve(_even_vector(g[pd]).unsqueeze(-1), chol[pd]).squeeze(-1)
            d[pd] = -step[:, : g.shape[1]]
        return d


class SaddleFreeNewton(Newton):
    """Newton's method where the Hessian is positive definite; elsewhere Newton on |H| (its
    eigenvalues replaced by their absolute values, floored at 1e-8 of the largest): a descent
    direction that follows negative curvature away from a saddle (Dauphin et al., 2014) instead of
    the BFGS direction. Over-specified mixtures start near such saddles (duplicated atoms), where
    about 2 in 5 first trial steps are rejected (K = 3, n = 1e5): trials are valued first."""

    value_first = True

    def direction(self, idx, g, hess):
        d = super().direction(idx, g, hess)
        bad = ~self.newton[idx]
        if bad.any():
            w, V = torch.linalg.eigh(_even(hess[bad]))
            w = w.abs().clamp_min(1e-8 * w.abs().amax(-1, keepdim=True))
            step = (V @ ((V.transpose(1, 2) @ _even_vector(g[bad]).unsqueeze(-1)) / w.unsqueeze(-1))).squeeze(-1)
            d[bad] = -step[:, : g.shape[1]]
            self.newton[idx[bad]] = True
        return d


STRATEGIES = {"lbfgs": LBFGS, "bfgs": BFGS, "newton": Newton, "newton_eigen": SaddleFreeNewton}


def _try(fun, u, idx, order: int, armijo, f0, value_first: bool):
    """Evaluate the trial points u (m, p) of problems idx. A trial is accepted where its value is
    at most ``armijo`` (m,), strictly below ``f0`` (m,), and it and its gradient are finite.
    Returns (ok (m,), the evaluation (loss, grad, hess) at the accepted rows). ``value_first``:
    the values alone first, the derivatives (of ``order``) only at the rows they accept, so that a
    rejected trial costs no Hessian (the values are the same either way, and so is every iterate)."""
    ev = fun(u, idx, 0 if value_first else order)
    ok = torch.isfinite(ev.loss) & (ev.loss <= armijo) & (ev.loss < f0)
    if value_first:
        rows = ok.nonzero().squeeze(1)
        if not rows.numel():
            return ok, ev
        ev = fun(u[rows], idx[rows], order)
        ok[rows] = torch.isfinite(ev.grad).all(1)
        keep = ok[rows]
    else:
        ok &= torch.isfinite(ev.grad).all(1)
        keep = ok
    return ok, Evaluation(ev.loss[keep], ev.grad[keep], None if ev.hess is None else ev.hess[keep])


def minimize(fun, u0, strategy, opts: SolverOptions, done, stationary, trace=None, rows=None):
    """Minimize R separable objectives.

    fun(u (m, p), idx (m,), order) -> ``objective.Evaluation`` for the problems ``idx`` (row i
    depends only on u[i]); done(f_old, f_new, u_old, u_new, g_new) -> (m,) bool, the stopping
    rule after an accepted step (a step is accepted on Armijo's condition and a strict decrease);
    stationary(g (m, p)) -> (m,) bool: where no step is accepted, whether that is convergence (so
    is a predicted gain below float rounding: nothing better can be resolved).
    Returns (u (R, p), f (R,), g (R, p), n_iter (R,), status) with
    status 'converged', 'max_iter' or 'stalled' (no decrease found along the search direction and
    the point is not stationary); ``trace``, if a list, receives one (R,) tensor of
    objective values per iteration (NaN where a problem had already finished).

    ``strategy``: a name in STRATEGIES, or a strategy object to continue (its curvature memory
    is kept across calls); ``rows`` (R,) then maps the problems to the object's rows."""
    R, p = u0.shape
    everyone = torch.arange(R, device=u0.device)
    dirs = STRATEGIES[strategy](R, p, u0, opts.history) if isinstance(strategy, str) else strategy
    rows = everyone if rows is None else rows
    u = u0.detach().clone()
    ev = fun(u, everyone, dirs.order)
    f, g, H = ev.loss, ev.grad, ev.hess
    n_iter = torch.zeros(R, dtype=torch.long, device=u.device)
    status = ["running"] * R
    active = torch.ones(R, dtype=torch.bool, device=u.device)
    for _ in range(opts.max_iter):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        ua, fa, ga = u[idx], f[idx], g[idx]
        d = dirs.direction(rows[idx], ga, None if H is None else H[idx])
        slope = (ga * d).sum(1)
        reset = ~(slope < 0)
        if reset.any():  # not a descent direction: restart from steepest descent
            dirs.reset(rows[idx[reset]])
            d[reset], slope[reset] = -ga[reset], -(ga[reset] ** 2).sum(1)
        # a trust cap on each step (max-norm): small while the curvature model is still the identity,
        # so the first steps cannot leap into another basin, looser once it is scaled
        cap = torch.where(dirs.fresh(rows[idx]) | reset, opts.first_step, opts.max_step)
        t = (cap / d.abs().amax(1).clamp_min(1e-300)).clamp(max=1.0)
        unew, fnew, gnew = ua.clone(), fa.clone(), ga.clone()
        Hnew = None if H is None else H[idx].clone()
        accepted = torch.zeros(idx.numel(), dtype=torch.bool, device=u.device)
        pending = torch.arange(idx.numel(), device=u.device)
        for tries in range(opts.max_ls):
            ut = ua[pending] + t[pending, None] * d[pending]
            armijo = fa[pending] + C1 * t[pending] * slope[pending]
            value_first = dirs.order == 2 and (tries > 0 or dirs.value_first)
            ok, trial = _try(fun, ut, idx[pending], dirs.order, armijo, fa[pending], value_first)
            hit = pending[ok]
            if hit.numel():
                unew[hit], fnew[hit], gnew[hit] = ut[ok], trial.loss, trial.grad
                if Hnew is not None:
                    Hnew[hit] = trial.hess
            accepted[hit] = True
            pending = pending[~ok]
            t[pending] = t[pending] / 2
            # give up where even the halved step's predicted gain is below float rounding: nothing to resolve
            pending = pending[-t[pending] * slope[pending] > rounding(fa[pending])]
            if pending.numel() == 0:
                break
        s, y = unew - ua, gnew - ga
        good = accepted & ((s * y).sum(1) > 1e-12 * s.norm(dim=1) * y.norm(dim=1))
        if good.any():
            dirs.update(rows[idx], s, y, good)
        u[idx], f[idx], g[idx] = unew, fnew, gnew
        if H is not None:
            H[idx] = Hnew
        n_iter[idx] += accepted.long()
        finished = accepted & done(fa, fnew, ua, unew, gnew)
        if trace is not None:
            row = torch.full((R,), float("nan"), dtype=u.dtype, device=u.device)
            row[idx] = fnew
            trace.append(row)
        stuck = ~accepted
        if stuck.any():  # no decrease: converged only at a stationary point, or where even the full step's
            # predicted gain (-slope / 2 on the local quadratic model) is below float rounding of f
            at_rest = stationary(ga[stuck]) | (-slope[stuck] / 2 <= rounding(fa[stuck]))
            for j, ok in zip(stuck.nonzero().squeeze(1).tolist(), at_rest.tolist()):
                status[int(idx[j])] = "converged" if ok else "stalled"
        for j in finished.nonzero().squeeze(1).tolist():
            status[int(idx[j])] = "converged"
        active[idx[finished | stuck]] = False
    status = ["max_iter" if s == "running" else s for s in status]
    return u, f, g, n_iter, status


def torch_lbfgs_one(fun, u0: torch.Tensor, opts: SolverOptions) -> torch.Tensor:
    """Minimize fun(u (p,)) -> (loss, grad (p,)) with a fresh ``torch.optim.LBFGS`` (strong Wolfe).
    Returns the final u (p,); the caller checks that the value is finite."""
    u = u0.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [u],
        lr=1.0,
        max_iter=opts.max_iter,
        tolerance_grad=opts.gtol,
        tolerance_change=opts.ftol,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        loss, grad = fun(u.detach())
        u.grad = grad
        return loss

    opt.step(closure)
    return u.detach()
