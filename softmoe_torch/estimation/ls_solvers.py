"""Least-squares solvers over R problems at once, each with its own state: Levenberg-Marquardt with
the Gauss-Newton system solved by preconditioned conjugate gradients on Jacobian products
(``levenberg_marquardt``), and the SGD protocol of the published simulations (``sgd_epochs``).
Both minimize F(u) = RSS / n of a ``ls_objective`` objective; u (R, p)."""

import torch

from .convergence import Contract

RHO_ACCEPT = 1e-4  # a step is taken where it achieves this share of its predicted decrease


def mean_loglik(F: torch.Tensor) -> torch.Tensor:
    """The Gaussian mean log-likelihood at the least-squares variance nu = F = RSS / n, (R,)."""
    return -0.5 * (torch.log(2 * torch.pi * F) + 1)


def pcg(matvec, b, precond, max_iter: int, eta):
    """Solve A x = b for m symmetric positive (semi)definite systems at once by conjugate gradients
    preconditioned with the diagonal ``precond`` (m, p) (its inverse, applied element-wise); each
    system stops when its residual is at most eta (m,) times |b|, on non-positive curvature, or
    after ``max_iter`` products. Returns (x (m, p), residual b - A x (m, p))."""
    x, r = torch.zeros_like(b), b.clone()
    z = precond * r
    p, rz = z.clone(), (r * z).sum(1)
    target = eta * b.norm(dim=1)
    active = r.norm(dim=1) > target
    for _ in range(max_iter):
        if not active.any():
            break
        Ap = matvec(p)
        pAp = (p * Ap).sum(1)
        active &= pAp > 0
        alpha = torch.where(active, rz / pAp.where(active, torch.ones_like(pAp)), torch.zeros_like(pAp))
        x += alpha[:, None] * p
        r -= alpha[:, None] * Ap
        active &= r.norm(dim=1) > target
        z = precond * r
        rz_new = (r * z).sum(1)
        beta = torch.where(active, rz_new / rz.where(rz != 0, torch.ones_like(rz)), torch.zeros_like(rz))
        p, rz = z + beta[:, None] * p, rz_new
    return x, r


def _begin(obj, u):
    """(a copy of u (R, p), F (R,), status, n_iter (R,)) at the start of a second-order solve."""
    u = u.clone()
    F = obj.value(u, torch.arange(u.shape[0], device=u.device))
    status = ["running" if torch.isfinite(v) else "failed: non-finite residuals at the start" for v in F]
    return u, F, status, torch.zeros(u.shape[0], dtype=torch.long)


def _running(obj, u, status, n_iter, contract: Contract):
    """The problems still running: (idx (m,), their linearization at u, largest gradient entries
    (m,), which take a step (m,) bool), or None when none runs; marks the stationary ones
    converged and those out of steps max_iter."""
    idx = torch.tensor([r for r, s in enumerate(status) if s == "running"], dtype=torch.long, device=u.device)
    if idx.numel() == 0:
        return None
    lin = obj.linearize(u[idx], idx)
    stationary = contract.stationary(lin.grad)
    go = ~stationary & (n_iter[idx.cpu()] < contract.max_iter).to(u.device)
    for j, r in enumerate(idx.tolist()):
        if stationary[j]:
            status[r] = "converged"
        elif not go[j]:
            status[r] = "max_iter"
    return idx, lin, lin.grad.abs().amax(1), go


def _settle(u, F, n_iter, status, trace, idx, go, ok, u_try, F_try, pred, gmax, stuck):
    """Take the trial steps where ``ok``; elsewhere among ``go``, mark stalled where the predicted
    decrease is below float rounding of F or ``stuck`` (m,) says so. In place."""
    ll_new = mean_loglik(F_try)
    for j in go.nonzero().squeeze(1).tolist():
        r = int(idx[j])
        if ok[j]:
            u[r], F[r] = u_try[j], F_try[j]
            n_iter[r] += 1
            trace[r].append(float(ll_new[j]))
        elif pred[j] <= 64 * torch.finfo(F.dtype).eps * F[r] or stuck[j]:
            status[r] = f"stalled: no step lowers the RSS beyond rounding (largest gradient entry {float(gmax[j]):.2e})"


def levenberg_marquardt(obj, u, contract: Contract, cg_iter: int, trace: list):
    """Levenberg-Marquardt from u (R, p): per problem, the step solves (J^T J / n + lam I) s = J^T r / n
    by ``pcg`` (Jacobi preconditioner where the objective gives the diagonal; forcing term
    min(0.1, sqrt(|g| / |g_0|))); a step is taken where it achieves RHO_ACCEPT of its predicted
    decrease, and lam follows Nielsen's update. Converged: the largest gradient entry of F at most
    the contract's gtol (its change rule is not used: a heavily damped step changes F by little
    anywhere); stalled: no step lowers F beyond rounding; max_iter: ``contract.max_iter`` accepted
    steps, or as many trials. ``trace`` (list of R lists) receives the mean log-likelihood after each step.
    Returns (u, F (R,), n_iter (R,), status)."""
    u, F, status, n_iter = _begin(obj, u)
    lam = torch.zeros_like(F)
    nu = torch.full_like(lam, 2.0)
    g0 = torch.zeros_like(lam)
    for _ in range(contract.max_iter + 1):
        state = _running(obj, u, status, n_iter, contract)
        if state is None:
            break
        idx, lin, gmax, go = state
        if not go.any():
            continue
        n = lin.r.shape[1]
        b = -lin.grad / 2  # J^T r / n
        fresh = lam[idx] == 0
        if fresh.any():  # lam_0: 1e-3 of the Gauss-Newton curvature along the gradient
            Gb = lin.vjp(lin.jvp(b)) / n
            lam[idx[fresh]] = 1e-3 * ((b * Gb).sum(1) / (b * b).sum(1).clamp_min(1e-300))[fresh]
            g0[idx[fresh]] = gmax[fresh]
        la = lam[idx]
        precond = 1 / ((lin.diag if lin.diag is not None else 0) + la[:, None])
        eta = torch.sqrt(gmax / g0[idx]).clamp(max=0.1)
        step, res = pcg(lambda v: lin.vjp(lin.jvp(v)) / n + la[:, None] * v, b, precond, cg_iter, eta)
        sGs = (step * (b - res)).sum(1) - la * (step * step).sum(1)
        pred = 2 * (step * b).sum(1) - sGs  # the Gauss-Newton model's decrease of F
        u_try = u[idx] + step
        F_try = obj.value(u_try, idx)
        rho = (F[idx] - F_try) / pred.clamp_min(1e-300)
        ok = go & torch.isfinite(F_try) & (F_try < F[idx]) & (rho > RHO_ACCEPT)
        lam[idx] = torch.where(ok, la * torch.clamp(1 - (2 * rho - 1) ** 3, min=1 / 3), la * nu[idx])
        nu[idx] = torch.where(ok, torch.full_like(la, 2.0), nu[idx] * 2)
        stuck = ~torch.isfinite(lam[idx])
        _settle(u, F, n_iter, status, trace, idx, go, ok, u_try, F_try, pred, gmax, stuck)
    return u, F, n_iter, ["max_iter" if s == "running" else s for s in status]


def sgd_epochs(obj, u, epochs: int, lr: float, batch_size: int, seeds: list):
    """Plain mini-batch SGD on the mean squared loss (y - f)^2 from u (R, p): ``epochs`` passes,
    each over a fresh random order of the samples (replication r's from its own generator, seeded
    ``seeds[r]``), in mini-batches of ``batch_size`` (the last one smaller), step ``lr`` times the
    mini-batch gradient. A problem whose parameters turn non-finite keeps its last finite epoch.
    Returns (u, status)."""
    R, n = obj.Y.shape
    u = u.clone()
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    each = torch.arange(R, device=u.device)[:, None]
    status = [f"finished: {epochs} epochs of SGD (no convergence test)"] * R
    failed = torch.zeros(R, dtype=torch.bool, device=u.device)
    kept = u.clone()  # each problem's last finite epoch
    for epoch in range(epochs):
        order = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(u.device)
        for a in range(0, n, batch_size):
            batch = order[:, a : a + batch_size]
            u = u - lr * obj.batch_grad(u, obj.inputs[each, batch], obj.Y[each, batch])
        bad = ~torch.isfinite(u).all(1) & ~failed
        for r in bad.nonzero().squeeze(1).tolist():
            status[r] = f"failed: non-finite parameters in epoch {epoch + 1}; kept epoch {epoch}"
        failed |= bad
        kept = torch.where(failed[:, None], kept, u)
    return kept, status


def _to_boundary(z, d, radius):
    """tau >= 0 (m,) with |z + tau d| = radius, per row."""
    a, b, c = (d * d).sum(1), 2 * (z * d).sum(1), (z * z).sum(1) - radius**2
    return (-b + torch.sqrt((b * b - 4 * a * c).clamp_min(0))) / (2 * a).clamp_min(1e-300)


def steihaug(hvp, g, scale, radius, max_iter: int, eta):
    """Approximately minimize g.s + s.H s / 2 over |s / scale| <= radius for m problems at once by
    Steihaug's truncated conjugate gradients (Nocedal & Wright, Algorithm 7.2) in the variables
    s / scale (``scale`` (m, p) > 0: a diagonal preconditioner); each stops at the boundary, on
    negative curvature (then it goes to the boundary along it), at a residual of eta (m,) times |g|
    or after ``max_iter`` products. Returns (s (m, p), H s (m, p)) in the original variables."""
    gs = g * scale
    z, Hz = torch.zeros_like(g), torch.zeros_like(g)
    r, d = gs.clone(), -gs
    target = eta * gs.norm(dim=1)
    active = r.norm(dim=1) > target
    for _ in range(max_iter):
        if not active.any():
            break
        Hd = hvp(d * scale) * scale
        dHd = (d * Hd).sum(1)
        rr = (r * r).sum(1)
        alpha = rr / dHd.where(dHd > 0, torch.ones_like(dHd))
        z_next = z + alpha[:, None] * d
        exit_ = active & ((dHd <= 0) | (z_next.norm(dim=1) >= radius))
        tau = torch.where(exit_, _to_boundary(z, d, radius), alpha)
        step = torch.where(active, tau, torch.zeros_like(tau))
        z = z + step[:, None] * d
        Hz = Hz + step[:, None] * Hd
        r_next = r + step[:, None] * Hd
        active &= ~exit_ & (r_next.norm(dim=1) > target)
        beta = (r_next * r_next).sum(1) / rr.clamp_min(1e-300)
        r, d = r_next, torch.where(active[:, None], -r_next + beta[:, None] * d, d)
    return z * scale, Hz / scale


def trust_newton(obj, u, contract: Contract, cg_iter: int, trace: list):
    """Trust-region Newton from u (R, p) with the exact Hessian of F through Hessian-vector products:
    per problem, ``steihaug`` in the variables scaled by the Gauss-Newton diagonal (where the
    objective gives it), radius updated by the ratio of actual to predicted decrease (x1/4 below
    1/4, x2 above 3/4 at the boundary); a step is taken where the ratio exceeds RHO_ACCEPT.
    Converged: the largest gradient entry of F at most gtol; stalled: no step lowers F beyond
    rounding. Returns (u, F (R,), n_iter (R,), status), ``trace`` as ``levenberg_marquardt``'s."""
    u, F, status, n_iter = _begin(obj, u)
    radius = torch.ones_like(F)
    g0 = torch.zeros_like(radius)
    for _ in range(contract.max_iter + 1):
        state = _running(obj, u, status, n_iter, contract)
        if state is None:
            break
        idx, lin, gmax, go = state
        if not go.any():
            continue
        g0[idx] = torch.where(g0[idx] == 0, gmax, g0[idx])
        scale = (
            torch.ones_like(lin.grad)
            if lin.diag is None
            else 1 / torch.sqrt(lin.diag.clamp_min(1e-12 * lin.diag.amax(1, keepdim=True)))
        )
        eta = torch.sqrt(gmax / g0[idx]).clamp(max=0.1)
        rad = radius[idx]
        step, Hs = steihaug(lin.hvp, lin.grad, scale, rad, cg_iter, eta)
        pred = -((lin.grad * step).sum(1) + 0.5 * (step * Hs).sum(1))
        u_try = u[idx] + step
        F_try = obj.value(u_try, idx)
        rho = (F[idx] - F_try) / pred.clamp_min(1e-300)
        ok = go & torch.isfinite(F_try) & (F_try < F[idx]) & (rho > RHO_ACCEPT)
        boundary = (step / scale).norm(dim=1) >= 0.99 * rad
        radius[idx] = torch.where(~ok | (rho < 0.25), rad / 4, torch.where((rho > 0.75) & boundary, 2 * rad, rad))
        _settle(u, F, n_iter, status, trace, idx, go, ok, u_try, F_try, pred, gmax, torch.zeros_like(ok))
    return u, F, n_iter, ["max_iter" if s == "running" else s for s in status]
