"""The estimator, written once: EM with an LBFGS (or batched BFGS) M-step, and a direct
quasi-Newton ascent of the marginal log-likelihood, both over R replications at once.

The model supplies one hook, ``log_joint`` (via ``batched_log_joint``); the driver knows nothing
of experiments or files."""
import dataclasses
import time
import warnings
from dataclasses import dataclass, field

import torch

from .optim import SolverOptions, batched_bfgs, lbfgs_one
from .params import ParamSpace, batched_log_joint

DEFAULT_BOUNDS = {"beta": 10.0, "tau": 10.0, "expert": 10.0, "nu": [1e-8, 1e2]}


@dataclass
class FitOptions:
    """How to fit. ``method``: 'em' or 'direct'; ``mstep`` (EM only): 'lbfgs' (torch.optim.LBFGS,
    one replication at a time) or 'bfgs' (batched BFGS over replications). EM stops when the
    change of the mean log-likelihood is below ``tol``, or after ``max_iter`` iterations."""

    method: str = "em"
    mstep: str = "lbfgs"
    tol: float = 1e-8
    max_iter: int = 1000
    bounds: dict | None = field(default_factory=lambda: dict(DEFAULT_BOUNDS))
    inner: SolverOptions = field(default_factory=SolverOptions)

    def __post_init__(self):
        if self.method not in ("em", "direct"):
            raise ValueError(f"fit.method must be 'em' or 'direct', got {self.method!r}")
        if self.mstep not in ("lbfgs", "bfgs"):
            raise ValueError(f"fit.mstep must be 'lbfgs' or 'bfgs', got {self.mstep!r}")
        if not self.tol > 0 or self.max_iter < 1:
            raise ValueError("fit.tol must be positive and fit.max_iter at least 1")
        if isinstance(self.inner, dict):
            self.inner = SolverOptions(**self.inner)


@dataclass
class FitResult:
    """Estimates and record of R fits. params: {name: (R, *shape)}; mean_loglik, n_iter,
    converged: (R,); status: one string per replication ('converged', 'max_iter', 'stalled'
    (direct only: no decrease found while the gradient is not small) or 'failed: reason');
    trace: per replication, the mean log-likelihood after each iteration; seconds: wall time of
    the whole call; at_bound: per replication, the parameters that ended on a box bound (the
    estimate is then the constrained MLE, not an interior stationary point)."""

    params: dict
    mean_loglik: torch.Tensor
    n_iter: torch.Tensor
    converged: torch.Tensor
    status: list
    trace: list
    seconds: float
    method: str
    at_bound: list

    def __len__(self):
        return self.mean_loglik.shape[0]

    def replication(self, r: int) -> dict:
        """One replication's estimates as plain python values."""
        return {n: v[r].tolist() for n, v in self.params.items()}


def _as_batch(X, Y):
    if X.dim() == 2:
        X, Y = X.unsqueeze(0), Y.unsqueeze(0)
    if X.dim() != 3 or Y.shape != X.shape[:2]:
        raise ValueError(f"expected X (R, n, d) and y (R, n), got {tuple(X.shape)} and {tuple(Y.shape)}")
    return X, Y


class _Problem:
    """Data, model and parameter layout of one ``fit`` call; evaluates the log joint of any
    subset ``idx`` of replications at flat parameters u (m, p)."""

    def __init__(self, model, X, Y, space):
        self.model, self.X, self.Y, self.space = model, X, Y, space

    def log_joint(self, u, idx):
        """(m, n, K+1)."""
        return batched_log_joint(self.model, self.space.to_natural(u), self.X[idx], self.Y[idx])

    def neg_loglik(self, u, idx):
        """Minus the mean log-likelihood, (m,)."""
        return -torch.logsumexp(self.log_joint(u, idx), -1).mean(-1)

    def neg_q(self, resp):
        """Minus the expected complete-data log-likelihood given responsibilities resp (R, n, K+1)."""
        return lambda u, idx: -(resp[idx] * self.log_joint(u, idx)).sum(-1).mean(-1)


def fit(model, X, Y, init: dict, options: FitOptions | None = None) -> FitResult:
    """Maximum-likelihood fit of ``model``'s trainable parameters to R data sets.

    X (R, n, d) or (n, d); Y (R, n) or (n,); init {name: (R, *shape)} starting values (see
    ``init.py``). The model's own parameters are not modified."""
    opts = options or FitOptions()
    X, Y = _as_batch(X, Y)
    space = ParamSpace(model, opts.bounds)
    prob = _Problem(model, X, Y, space)
    start = time.perf_counter()
    u = space.to_unconstrained({k: v.to(X) for k, v in init.items()})
    run = _run_em if opts.method == "em" else _run_direct
    u, ll, n_iter, status, trace = run(prob, u, opts)
    converged = torch.tensor([s == "converged" for s in status])
    params = {k: v.detach() for k, v in space.to_natural(u).items()}
    result = FitResult(
        params=params,
        mean_loglik=ll,
        n_iter=n_iter,
        converged=converged,
        status=status,
        trace=trace,
        seconds=time.perf_counter() - start,
        method=opts.method,
        at_bound=space.at_bound(params),
    )
    _warn_if_unconverged(result, opts)
    return result


def _mean_loglik(log_joint):
    return torch.logsumexp(log_joint, -1).mean(-1)


def _run_em(prob, u, opts):
    R = u.shape[0]
    everyone = torch.arange(R, device=u.device)
    with torch.no_grad():
        lj = prob.log_joint(u, everyone)
    ll = _mean_loglik(lj)
    status = ["running" if torch.isfinite(v) else "failed: non-finite log-likelihood at the start" for v in ll]
    trace = [[float(v)] for v in ll]
    n_iter = torch.zeros(R, dtype=torch.long)
    for it in range(1, opts.max_iter + 1):
        idx = torch.tensor([r for r in range(R) if status[r] == "running"], dtype=torch.long, device=u.device)
        if idx.numel() == 0:
            break
        resp = torch.zeros_like(lj)
        resp[idx] = torch.softmax(lj[idx], -1)  # E-step
        neg_q = prob.neg_q(resp)
        if opts.mstep == "bfgs":
            u_new, _, _, _ = batched_bfgs(lambda v, j: neg_q(v, idx[j]), u[idx], opts.inner)
        else:
            u_new = torch.stack(
                [lbfgs_one(lambda v, j=j: neg_q(v[None], idx[j : j + 1])[0], u[r], opts.inner) for j, r in enumerate(idx)]
            )
        with torch.no_grad():
            lj_new = prob.log_joint(u_new, idx)
        ll_new = _mean_loglik(lj_new)
        for j, r in enumerate(idx.tolist()):
            n_iter[r] = it
            if not (torch.isfinite(ll_new[j]) and torch.isfinite(u_new[j]).all()):
                status[r] = f"failed: non-finite values after M-step {it}; rolled back to iteration {it - 1}"
                continue
            change = float(ll_new[j] - ll[r])
            u[r], lj[r], ll[r] = u_new[j], lj_new[j], ll_new[j]
            trace[r].append(float(ll_new[j]))
            if abs(change) < opts.tol:
                status[r] = "converged"
    return u, ll, n_iter, ["max_iter" if s == "running" else s for s in status], trace


def _run_direct(prob, u, opts):
    inner = dataclasses.replace(opts.inner, max_iter=opts.max_iter)
    rows = []
    with torch.no_grad():
        ll0 = -prob.neg_loglik(u, torch.arange(u.shape[0], device=u.device))
    u, f, n_iter, status = batched_bfgs(prob.neg_loglik, u, inner, trace=rows)
    status = [s if torch.isfinite(v) else "failed: non-finite log-likelihood at the start" for s, v in zip(status, ll0)]
    trace = [[float(ll0[r])] + [-float(row[r]) for row in rows if not torch.isnan(row[r])] for r in range(u.shape[0])]
    return u, -f, n_iter.cpu(), status, trace


def _warn_if_unconverged(result, opts):
    bad = [s for s in result.status if s != "converged"]
    if not bad:
        return
    advice = (
        "raise fit.max_iter, loosen fit.tol, start closer (init.scale), or try fit.method=direct"
        if opts.method == "em"
        else "raise fit.max_iter or start closer (init.scale)"
    )
    warnings.warn(f"{len(bad)} of {len(result)} fits did not converge ({bad[0]}); {advice}", RuntimeWarning, stacklevel=3)


def fit_best_of(model, X, Y, starts: list, options: FitOptions | None = None) -> FitResult:
    """Fit from each start in ``starts`` (a non-empty list of init dicts) and keep, per
    replication, the fit with the highest mean log-likelihood; failed fits never win."""
    if not starts:
        raise ValueError("no starting points: init.n_init must be at least 1")

    def score(res):
        ok = torch.tensor([not s.startswith("failed") for s in res.status], device=res.mean_loglik.device)
        return torch.where(ok & torch.isfinite(res.mean_loglik), res.mean_loglik, -torch.inf)

    best = None
    for init in starts:
        res = fit(model, X, Y, init, options)
        if best is None:
            best = res
            continue
        better = (score(res) > score(best)).cpu()
        for r in better.nonzero().squeeze(1).tolist():
            for name in best.params:
                best.params[name][r] = res.params[name][r]
            best.mean_loglik[r], best.n_iter[r], best.converged[r] = res.mean_loglik[r], res.n_iter[r], res.converged[r]
            best.status[r], best.trace[r], best.at_bound[r] = res.status[r], res.trace[r], res.at_bound[r]
        best.seconds += res.seconds
    return best
