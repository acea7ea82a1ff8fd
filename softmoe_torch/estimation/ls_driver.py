"""The least-squares driver: fits a ``RegressionMoE`` to R data sets from one or more starts and
keeps, per data set, the fit of smallest RSS. Methods (``FitOptions.method``):

- 'lm': Levenberg-Marquardt on Jacobian products (``ls_solvers.levenberg_marquardt``), to the
  convergence contract with ``gtol`` on the gradient of RSS / n;
- 'trust_newton': trust-region Newton on Hessian-vector products (``ls_solvers.trust_newton``), the
  same contract;
- 'ls_lbfgs': the project's batched L-BFGS (``optim.minimize``) on RSS / n, the same contract;
- 'sgd': the published simulations' protocol, plain mini-batch SGD for ``epochs`` passes at step
  ``lr`` (no convergence test; the status says so).

The converging methods fit inside ``FitOptions.bounds`` (the theory's compact parameter space; the
gradient of the contract is then in the unconstrained variables, and ``at_bound`` names the
parameters that end on a bound); 'sgd' steps in the parameters themselves, as the papers do.
The fit's ``mean_loglik`` is the Gaussian one at nu = RSS / n."""

import dataclasses
import math
import time

import torch

from .driver import BatchFit, FitOptions, replication_groups, threads_for
from .evaluation import Evaluation
from .inputs import as_batch
from .ls_objective import BoxedLS, StructuredLS, make_ls_objective
from .ls_solvers import levenberg_marquardt, mean_loglik, sgd_epochs, trust_newton
from .optim import minimize
from .params import ParamSpace

SMALL_WORK = 1_000_000  # samples x parameters below which a least-squares fit runs on one thread (K = 9, d = 32,
# 594 parameters, 10 lm steps, this 2-core machine: two threads 1.0x at 1000 samples, 1.25x at 3000, 1.5x at 8 x 20000)


class _Counted:
    """An objective whose values and linearizations (calls over the batch) are counted."""

    def __init__(self, objective):
        self.objective, self.calls = objective, 0

    def __getattr__(self, name):
        return getattr(self.objective, name)

    def value(self, u, idx):
        self.calls += 1
        return self.objective.value(u, idx)

    def linearize(self, u, idx, diag: bool = True):
        self.calls += 1
        return self.objective.linearize(u, idx, diag)


def _box(objective, space: ParamSpace, like: torch.Tensor):
    """(lo, hi) (p,) of ``space``'s intervals in ``objective``'s layout (infinite where unbounded)."""
    ends = []
    for side in (0, 1):
        values = {}
        for name, shape, interval in zip(space.names, space.shapes, space.intervals):
            end = math.inf * (2 * side - 1) if interval is None else interval[side]
            values[name] = torch.full((1, *shape), end, dtype=like.dtype, device=like.device)
        ends.append(objective.pack(values)[0])
    return ends


def _fit_group(model, X, Y, init: dict, opts: FitOptions, seeds: list) -> BatchFit:
    space = ParamSpace(model, opts.bounds)
    raw = make_ls_objective(model, X, Y, opts.fused)
    boxed = opts.method != "sgd" and any(i is not None for i in space.intervals)
    obj = _Counted(BoxedLS(raw, *_box(raw, space, X)) if boxed else raw)
    start = time.perf_counter()
    u = obj.pack({k: v.to(X) for k, v in init.items()})
    R = u.shape[0]
    everyone = torch.arange(R, device=u.device)
    trace = [[float(v)] for v in mean_loglik(obj.value(u, everyone))]
    if opts.method in ("lm", "trust_newton"):
        solve = levenberg_marquardt if opts.method == "lm" else trust_newton
        u, F, n_iter, status = solve(obj, u, opts.contract, opts.inner.max_iter, trace)
    elif opts.method == "ls_lbfgs":

        def fun(v, idx, order):
            if order == 0:
                return Evaluation(obj.value(v, idx))
            lin = obj.linearize(v, idx, diag=False)
            return Evaluation(lin.F, lin.grad)

        def done(f_old, f_new, u_old, u_new, g_new):
            return opts.contract.met(mean_loglik(f_old), mean_loglik(f_new), u_old, u_new, g_new)

        rows = []
        inner = dataclasses.replace(opts.inner, max_iter=opts.contract.max_iter)
        u, F, _, n_iter, status = minimize(fun, u, "lbfgs", inner, done, opts.contract.stationary, trace=rows)
        for r in range(R):
            trace[r] += [float(mean_loglik(row[r])) for row in rows if not torch.isnan(row[r])]
    else:
        u, status = sgd_epochs(obj, u, opts.epochs, opts.lr, opts.batch_size, seeds)
        F = obj.value(u, everyone)
        n_iter = torch.full((R,), opts.epochs, dtype=torch.long)
        for r in range(R):
            trace[r].append(float(mean_loglik(F[r : r + 1])[0]))
    params = {k: v.detach().clone() for k, v in obj.unpack(u).items()}
    gradient_max = obj.linearize(u, everyone, diag=False).grad.abs().amax(1).detach()
    return BatchFit(
        params=params,
        mean_loglik=mean_loglik(F).detach(),
        n_iter=n_iter.cpu(),
        converged=torch.tensor([s == "converged" for s in status]),
        status=status,
        trace=trace,
        at_bound=space.at_bound(params) if boxed else [[] for _ in range(R)],
        seconds=time.perf_counter() - start,
        n_evals=obj.calls,
        solver=opts.method,
        fused=isinstance(raw, StructuredLS),
        gradient_max=gradient_max,
    )


def fit_least_squares(model, X, Y, starts: list, options: FitOptions, seeds: list) -> BatchFit:
    """Least-squares fits of ``model`` to X (R, n, d), Y (R, n) from each start in ``starts``
    ({name: (R, *shape)} each), in groups of replications (``driver.replication_groups``); per data
    set the fit of highest mean log-likelihood (smallest RSS) that did not fail is kept. ``seeds``
    (R,): the SGD shuffles' seeds."""
    X, Y = as_batch(X, Y)
    begin = time.perf_counter()
    best = None
    for init in starts:
        parts = []
        for rows in replication_groups(*Y.shape):
            with threads_for(Y[rows].numel() * sum(v[0].numel() for v in init.values()), SMALL_WORK):
                sub = {k: v[rows] for k, v in init.items()}
                parts.append(_fit_group(model, X[rows], Y[rows], sub, options, seeds[rows]))
        fit = parts[0] if len(parts) == 1 else BatchFit.concat(parts)
        best = fit if best is None else best.replace_where(_score(fit) > _score(best), fit)
    return dataclasses.replace(best, seconds=time.perf_counter() - begin)


def _score(fit: BatchFit) -> torch.Tensor:
    ok = torch.tensor([not s.startswith("failed") for s in fit.status], device=fit.mean_loglik.device)
    return torch.where(ok & torch.isfinite(fit.mean_loglik), fit.mean_loglik, -torch.inf)
