"""Optimizers over flat unconstrained parameters u.

``batched_bfgs`` solves R independent problems at once: every replication has its own inverse
Hessian, step length and stopping rule, so its trajectory is the one it would follow alone.
``lbfgs_one`` runs ``torch.optim.LBFGS`` (fresh, strong-Wolfe) on a single problem.
"""
from dataclasses import dataclass

import torch

C1 = 1e-4  # Armijo constant


@dataclass
class SolverOptions:
    """Inner stopping rule: relative change of the objective below ``ftol`` or max |gradient|
    below ``gtol``, at most ``max_iter`` iterations; steps (in max-norm over u) at most
    ``first_step`` before the first curvature update and ``max_step`` after."""

    max_iter: int = 200
    ftol: float = 1e-12
    gtol: float = 1e-9
    max_ls: int = 40
    stall_gtol: float = 1e-6
    first_step: float = 1e-2
    max_step: float = 0.5


def _value_and_grad(fun, u, idx):
    u = u.detach().requires_grad_(True)
    with torch.enable_grad():
        f = fun(u, idx)
        (g,) = torch.autograd.grad(f.sum(), u)
    return f.detach(), g


def batched_bfgs(fun, u0: torch.Tensor, opts: SolverOptions, trace=None):
    """Minimize R separable objectives with BFGS and a backtracking Armijo line search.

    fun(u (m, p), idx (m,)) -> (m,) values of the problems ``idx`` at rows of u; it must be
    separable (row i depends only on u[i]). Returns (u (R, p), f (R,), n_iter (R,), status list)
    with status 'converged', 'max_iter' or 'stalled'. When no decrease is found along the
    search direction the problem ends: 'converged' if max |gradient| <= ``stall_gtol`` (the end
    of what float precision allows at a flat optimum), else 'stalled'.
    ``trace``, if a list, receives one (R,) tensor of objective values per iteration (NaN where
    a problem was already finished)."""
    R, p = u0.shape
    everyone = torch.arange(R, device=u0.device)
    u = u0.detach().clone()
    f, g = _value_and_grad(fun, u, everyone)
    eye = torch.eye(p, dtype=u.dtype, device=u.device)
    H = eye.expand(R, p, p).clone()
    fresh = torch.ones(R, dtype=torch.bool, device=u.device)
    n_iter = torch.zeros(R, dtype=torch.long, device=u.device)
    status = ["converged" if bool(gm <= opts.gtol) else "running" for gm in g.abs().amax(1)]
    active = torch.tensor([s == "running" for s in status], device=u.device)
    for _ in range(opts.max_iter):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        ua, fa, ga, Ha = u[idx], f[idx], g[idx], H[idx]
        d = -(Ha @ ga.unsqueeze(-1)).squeeze(-1)
        slope = (ga * d).sum(1)
        reset = ~(slope < 0)
        if reset.any():  # not a descent direction: fall back to steepest descent
            Ha[reset] = eye
            d[reset] = -ga[reset]
            slope[reset] = -(ga[reset] ** 2).sum(1)
            fresh[idx[reset]] = True
        # a trust cap on each step (max-norm): small while the inverse Hessian is still the
        # identity, so the first steps cannot leap into another basin, looser once it is scaled
        cap = torch.where(fresh[idx], opts.first_step, opts.max_step)
        t = (cap / d.abs().amax(1)).clamp(max=1.0)
        unew, fnew, gnew = ua.clone(), fa.clone(), ga.clone()
        accepted = torch.zeros_like(active[idx])
        pending = torch.arange(idx.numel(), device=u.device)
        for _ in range(opts.max_ls):
            ut = ua[pending] + t[pending, None] * d[pending]
            ft, gt = _value_and_grad(fun, ut, idx[pending])
            ok = torch.isfinite(ft) & torch.isfinite(gt).all(1)
            ok &= ft <= fa[pending] + C1 * t[pending] * slope[pending]
            hit = pending[ok]
            unew[hit], fnew[hit], gnew[hit] = ut[ok], ft[ok], gt[ok]
            accepted[hit] = True
            pending = pending[~ok]
            if pending.numel() == 0:
                break
            t[pending] = t[pending] / 2
        s, yv = unew - ua, gnew - ga
        sy = (s * yv).sum(1)
        good = accepted & (sy > 1e-12 * s.norm(dim=1) * yv.norm(dim=1))
        if good.any():
            Hg, sg, yg, syg = Ha[good], s[good], yv[good], sy[good]
            scale = syg / (yg * yg).sum(1)
            Hg = torch.where(fresh[idx[good]][:, None, None], scale[:, None, None] * eye, Hg)
            rho = (1.0 / syg)[:, None, None]
            V = eye - rho * sg.unsqueeze(2) * yg.unsqueeze(1)
            Ha[good] = V @ Hg @ V.transpose(1, 2) + rho * sg.unsqueeze(2) * sg.unsqueeze(1)
            fresh[idx[good]] = False
        u[idx], f[idx], g[idx], H[idx] = unew, fnew, gnew, Ha
        n_iter[idx] += accepted.long()
        scale_f = torch.maximum(torch.maximum(fa.abs(), fnew.abs()), torch.ones_like(fa))
        done = accepted & (((fa - fnew) <= opts.ftol * scale_f) | (gnew.abs().amax(1) <= opts.gtol))
        if trace is not None:
            row = torch.full((R,), float("nan"), dtype=u.dtype, device=u.device)
            row[idx] = fnew
            trace.append(row)
        for j in (~accepted).nonzero().squeeze(1).tolist():
            status[idx[j]] = "converged" if bool(ga[j].abs().max() <= opts.stall_gtol) else "stalled"
        for j in done.nonzero().squeeze(1).tolist():
            status[idx[j]] = "converged"
        active[idx[done | ~accepted]] = False
    status = ["max_iter" if s == "running" else s for s in status]
    return u, f, n_iter, status


def lbfgs_one(fun, u0: torch.Tensor, opts: SolverOptions) -> torch.Tensor:
    """Minimize fun(u (p,)) -> scalar with a fresh ``torch.optim.LBFGS`` (strong Wolfe).
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
        opt.zero_grad()
        loss = fun(u)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return u.detach()
