"""The least-squares driver: fits a ``RegressionMoE`` to R data sets from one or more starts and
keeps, per data set, the fit of smallest RSS. Methods (``FitOptions.method``):

- 'lm': Levenberg-Marquardt on Jacobian products (``ls_solvers.levenberg_marquardt``), to the
  convergence contract with ``gtol`` on the gradient of RSS / n;
- 'ls_lbfgs': the project's batched L-BFGS (``optim.minimize``) on RSS / n, the same contract;
- 'sgd': the published simulations' protocol, plain mini-batch SGD for ``epochs`` passes at step
  ``lr`` (no convergence test; the status says so).

The fit's ``mean_loglik`` is the Gaussian one at nu = RSS / n."""

import dataclasses
import time

import torch

from .driver import BatchFit, FitOptions, _threads_for, replication_groups
from .evaluation import Evaluation
from .inputs import as_batch
from .ls_objective import StructuredLS, make_ls_objective
from .ls_solvers import levenberg_marquardt, mean_loglik, sgd_epochs, trust_newton
from .optim import minimize


def _fit_group(model, X, Y, init: dict, opts: FitOptions, seeds: list) -> BatchFit:
    obj = make_ls_objective(model, X, Y, opts.fused)
    start = time.perf_counter()
    u = obj.pack({k: v.to(X) for k, v in init.items()})
    R = u.shape[0]
    everyone = torch.arange(R, device=u.device)
    trace = [[float(v)] for v in mean_loglik(obj.value(u, everyone))]
    calls = {"n": 0}
    if opts.method in ("lm", "trust_newton"):
        solve = levenberg_marquardt if opts.method == "lm" else trust_newton
        u, F, n_iter, status = solve(obj, u, opts.contract, opts.inner.max_iter, trace)
    elif opts.method == "ls_lbfgs":

        def fun(v, idx, order):
            calls["n"] += 1
            if order == 0:
                return Evaluation(obj.value(v, idx))
            lin = obj.linearize(v, idx)
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
    return BatchFit(
        params=params,
        mean_loglik=mean_loglik(F).detach(),
        n_iter=n_iter.cpu(),
        converged=torch.tensor([s == "converged" for s in status]),
        status=status,
        trace=trace,
        at_bound=[[] for _ in range(R)],
        seconds=time.perf_counter() - start,
        n_evals=calls["n"],
        solver=opts.method,
        fused=isinstance(obj, StructuredLS),
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
            with _threads_for(Y[rows].numel()):
                sub = {k: v[rows] for k, v in init.items()}
                parts.append(_fit_group(model, X[rows], Y[rows], sub, options, seeds[rows]))
        fit = parts[0] if len(parts) == 1 else BatchFit.concat(parts)
        best = fit if best is None else best.replace_where(_score(fit) > _score(best), fit)
    return dataclasses.replace(best, seconds=time.perf_counter() - begin)


def _score(fit: BatchFit) -> torch.Tensor:
    ok = torch.tensor([not s.startswith("failed") for s in fit.status], device=fit.mean_loglik.device)
    return torch.where(ok & torch.isfinite(fit.mean_loglik), fit.mean_loglik, -torch.inf)
