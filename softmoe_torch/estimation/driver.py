"""The fitting driver, written once: EM (E-step in torch, M-step by a batched L-BFGS), and direct
maximization of the marginal log-likelihood by batched BFGS or Newton, all over R replications
at once and under one convergence contract (``convergence.py``).

The objective (``objective.py``) supplies the log-likelihood, its derivatives and the
responsibilities; the driver knows nothing of experiments or files."""

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .acceleration import Anderson, squarem_cycle
from .convergence import Contract, rounding, warn_unconverged
from .inputs import as_batch
from .objective import GenericObjective, compiled_path, fused_supported, make_objective
from .optim import STRATEGIES, SolverOptions, minimize, torch_lbfgs_one
from .params import ParamSpace, stack_params

DEFAULT_BOUNDS = {"real": 10.0, "positive": [1e-8, 1e2]}
METHODS = ("em", "direct", "newton")
LS_METHODS = ("lm", "trust_newton", "ls_lbfgs", "sgd")  # least squares, for regression mixtures (``ls_driver.py``)
METHOD_DEFAULTS = {  # conf/fit/*.yaml say the same (a test checks)
    "em": dict(
        method="em",
        mstep="lbfgs",
        warm_mstep=True,
        accelerate="anderson",
        anderson_depth=5,
        tol=1e-8,
        max_iter=1000,
        inner=dict(max_iter=5),
    ),
    "em_newton": dict(
        method="em",
        mstep="newton",
        warm_mstep=True,
        accelerate="anderson",
        anderson_depth=5,
        tol=1e-8,
        max_iter=1000,
        inner=dict(max_iter=5),
    ),
    "em_torch": dict(
        method="em",
        mstep="torch_lbfgs",
        warm_mstep=False,
        accelerate="none",
        tol=1e-8,
        max_iter=1000,
        inner=dict(max_iter=200),
    ),
    "direct": dict(method="direct", mstep="bfgs", tol=1e-12, max_iter=2000),
    "newton": dict(method="newton", mstep="bfgs", tol=1e-12, max_iter=2000),
    "lm": dict(method="lm", tol=1e-15, gtol=1e-8, max_iter=1000, inner=dict(max_iter=100)),
    "trust_newton": dict(method="trust_newton", tol=1e-15, gtol=1e-8, max_iter=1000, inner=dict(max_iter=100)),
    "ls_lbfgs": dict(method="ls_lbfgs", tol=1e-15, gtol=1e-8, max_iter=20000, inner=dict(history=20)),
    "sgd": dict(method="sgd", epochs=10, lr=0.1, batch_size=64),
}
MSTEPS = (
    "lbfgs",
    "bfgs",
    "newton",
    "newton_eigen",
    "torch_lbfgs",
)  # newton_eigen: what newton becomes under indefinite=eigen
ACCELERATIONS = ("none", "squarem", "anderson")
INDEFINITE = ("bfgs", "eigen")
SMALL_BATCH = 200_000  # samples (R * n) below which a fit runs on one thread
CHUNK = 100_000  # samples (R * n) fitted together at most (whole replications; at least one)
COMPILED_CHUNK = 1_000_000  # the same on the compiled mixture path, where each call's fixed cost (its guards, the
# optimizer's small operations) is shared by the rows: K = 4, one thread, 40 replications at n = 1e4 in one group
# against four, 0.28 against 0.43 s a replication; 20 at n = 5e4 in one group against ten, 1.45 against 2.1 s
STARTS_SAMPLES = 5_000_000  # the same for the several starts of one group fitted together on the compiled path
# (``fit_best_of``; each of the default 5 starts of a group of COMPILED_CHUNK samples): K = 4, one thread, 5 starts
# of 20 replications at n = 1e4 fitted together against one after another, 5.1 against 6.4 s; 10 at n = 1e5,
# 25.0 against 29.6 s (peak memory 1.8 against 0.85 GB)


@dataclass
class FitOptions:
    """How to fit. ``method``: 'em', 'direct' (batched BFGS on the marginal log-likelihood) or
    'newton' (batched Newton with the exact Hessian; BFGS where the model has no fused path).
    ``mstep`` (EM only): 'lbfgs' (the batched L-BFGS, each replication its own history),
    'bfgs' (batched BFGS), 'newton' (batched Newton with the exact Hessian of Q where the model
    has a fused path, else BFGS) or 'torch_lbfgs' (``torch.optim.LBFGS``, one replication at a
    time). ``tol``, ``rule``, ``gtol``, ``max_iter``: the convergence contract. ``inner``: the
    M-step's own stopping rule; ``accelerate`` (EM only, see ``acceleration.py``): 'anderson'
    (Anderson acceleration over the last ``anderson_depth`` EM maps, never worse than the plain
    EM step), 'squarem' (SQUAREM cycles of three EM iterations, the contract then checked once
    per cycle, once ``squarem_after`` plain EM iterations are done) or 'none'; ``warm_mstep``:
    the batched M-step solver keeps each replication's curvature pairs from one M-step to the
    next (short, inexact M-steps then suffice; every step still raises Q, so the likelihood never
    drops). ``indefinite``: what a Newton step does where the Hessian is not positive definite:
    'bfgs' (the BFGS direction) or 'eigen' (Newton on |H|, saddle-free; far fewer iterations for
    over-specified mixtures). ``fused``: use the fused fast path where the model allows it.
    ``compile``: run the fused mixture path (K >= 2 components) through ``torch.compile`` on the
    CPU: 2-4x faster evaluations, the same numbers to rounding, but the first fits in a process pay
    the compilation (about 10-30 s; less once inductor's disk cache holds it); for sweeps.

    Regression mixtures (``RegressionMoE``) are fitted by least squares (``ls_driver.py``):
    ``method`` 'lm' (Levenberg-Marquardt; ``inner.max_iter`` its conjugate-gradient products per
    step), 'ls_lbfgs' (the batched L-BFGS, ``inner.history`` pairs) or 'sgd' (``epochs`` passes of
    mini-batch SGD of ``batch_size`` at step ``lr``); ``gtol`` then bounds the gradient of RSS / n."""

    method: str = "em"
    mstep: str = "lbfgs"
    tol: float = 1e-8
    rule: str = "loglik"
    gtol: float = 1e-8
    max_iter: int = 1000
    bounds: dict | None = field(default_factory=lambda: dict(DEFAULT_BOUNDS))
    inner: SolverOptions = field(default_factory=SolverOptions)
    accelerate: str = "anderson"
    squarem_after: int = 40
    anderson_depth: int = 5
    warm_mstep: bool = True
    fused: bool = True
    indefinite: str = "bfgs"
    compile: bool = False
    epochs: int = 10
    lr: float = 0.1
    batch_size: int = 64

    def __post_init__(self):
        if self.method not in METHODS + LS_METHODS:
            raise ValueError(f"fit.method must be one of {', '.join(METHODS + LS_METHODS)}, got {self.method!r}")
        if self.mstep not in MSTEPS:
            raise ValueError(f"fit.mstep must be one of {', '.join(MSTEPS)}, got {self.mstep!r}")
        if self.indefinite not in INDEFINITE:
            raise ValueError(f"fit.indefinite must be one of {', '.join(INDEFINITE)}, got {self.indefinite!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"fit.compile must be true or false here, got {self.compile!r}")
        if self.accelerate not in ACCELERATIONS:
            raise ValueError(f"fit.accelerate must be one of {', '.join(ACCELERATIONS)}, got {self.accelerate!r}")
        for name in ("tol", "gtol", "max_iter", "squarem_after", "anderson_depth", "epochs", "lr", "batch_size"):
            value, integer = getattr(self, name), name not in ("tol", "gtol", "lr")
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or integer
                and not float(value).is_integer()
            ):
                raise ValueError(f"fit.{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
        for name in ("anderson_depth", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"fit.{name} must be at least 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"fit.lr must be positive, got {self.lr!r}")
        if isinstance(self.inner, dict):
            self.inner = SolverOptions(**self.inner)
        self.contract = Contract(self.tol, self.rule, self.gtol, self.max_iter)

    @classmethod
    def for_method(cls, method: str, **overrides) -> "FitOptions":
        """The documented defaults of ``method`` ('em', 'em_newton', 'em_torch', 'direct' or 'newton'; the same as
        conf/fit/<method>.yaml) with ``overrides``."""
        if method not in METHOD_DEFAULTS:
            raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHOD_DEFAULTS)}")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(
                f"unknown fit option(s) {', '.join(unknown)}; the options are "
                f"{', '.join(f.name for f in dataclasses.fields(cls) if f.name != 'method')}"
            )
        fields = {k: (dict(v) if isinstance(v, dict) else v) for k, v in METHOD_DEFAULTS[method].items()}
        inner = {**fields.pop("inner", {}), **(overrides.pop("inner", None) or {})}
        return cls(**{**fields, **overrides}, inner=SolverOptions(**inner))


@dataclass
class BatchFit:
    """Estimates and record of R fits. params: {name: (R, *shape)}; mean_loglik, n_iter,
    converged: (R,); status: one string per replication (see ``convergence.py``); trace: per
    replication, the mean log-likelihood at the start and after each iteration; at_bound: per
    replication, the parameters that ended on a box bound (the estimate is then the constrained
    MLE); seconds: wall time of the call(s); n_evals: objective evaluations (calls over the batch);
    solver: what ran ('em/lbfgs+anderson', 'em/newton+squarem', 'newton', ...); fused: whether the fused path
    was used; gradient_max (least squares only): (R,) the largest gradient entry of RSS / n at the end,
    in the optimizer's variables (what the contract's gtol bounds)."""

    params: dict
    mean_loglik: torch.Tensor
    n_iter: torch.Tensor
    converged: torch.Tensor
    status: list
    trace: list
    at_bound: list
    seconds: float
    n_evals: int
    solver: str
    fused: bool
    gradient_max: torch.Tensor | None = None

    def __len__(self):
        return self.mean_loglik.shape[0]

    @staticmethod
    def concat(parts: list) -> "BatchFit":
        """The fits of consecutive groups of replications as one; times and evaluations add up."""
        first = parts[0]
        cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
        join = lambda name: [x for p in parts for x in getattr(p, name)]  # noqa: E731
        return BatchFit(
            params={k: torch.cat([p.params[k] for p in parts]) for k in first.params},
            mean_loglik=cat("mean_loglik"),
            n_iter=cat("n_iter"),
            converged=cat("converged"),
            status=join("status"),
            trace=join("trace"),
            at_bound=join("at_bound"),
            seconds=sum(p.seconds for p in parts),
            n_evals=sum(p.n_evals for p in parts),
            solver=first.solver,
            fused=first.fused,
            gradient_max=None if first.gradient_max is None else cat("gradient_max"),
        )

    def take(self, rows: slice) -> "BatchFit":
        """The fits of replications ``rows`` alone; the time and evaluations as they are (the whole call's)."""
        cut = lambda t: None if t is None else t[rows]  # noqa: E731
        return dataclasses.replace(
            self,
            params={k: v[rows] for k, v in self.params.items()},
            mean_loglik=self.mean_loglik[rows],
            n_iter=self.n_iter[rows],
            converged=self.converged[rows],
            status=self.status[rows],
            trace=self.trace[rows],
            at_bound=self.at_bound[rows],
            gradient_max=cut(self.gradient_max),
        )

    def split(self, parts: int) -> list:
        """The fits as ``parts`` batches of consecutive replications, equal in number; the time and the
        evaluations go to the first (so that, joined again, they add up as before)."""
        if len(self) % parts:
            raise ValueError(f"{len(self)} fits do not split into {parts} equal parts")
        size = len(self) // parts
        first, *rest = (self.take(slice(i * size, (i + 1) * size)) for i in range(parts))
        return [first] + [dataclasses.replace(part, seconds=0.0, n_evals=0) for part in rest]

    def replace_where(self, mask: torch.Tensor, other: "BatchFit") -> "BatchFit":
        """A fit taking replication r from ``other`` where mask[r], else from self; times and
        evaluations add up."""
        rows = mask.cpu().tolist()
        pick = lambda a, b: [y if m else x for x, y, m in zip(a, b, rows)]  # noqa: E731
        where = lambda a, b: torch.where(mask.to(a.device).reshape(-1, *[1] * (a.dim() - 1)), b, a)  # noqa: E731
        return BatchFit(
            params={k: where(v, other.params[k]) for k, v in self.params.items()},
            mean_loglik=where(self.mean_loglik, other.mean_loglik),
            n_iter=where(self.n_iter, other.n_iter),
            converged=where(self.converged, other.converged),
            status=pick(self.status, other.status),
            trace=pick(self.trace, other.trace),
            at_bound=pick(self.at_bound, other.at_bound),
            seconds=self.seconds + other.seconds,
            n_evals=self.n_evals + other.n_evals,
            solver=self.solver,
            fused=self.fused,
            gradient_max=None if self.gradient_max is None else where(self.gradient_max, other.gradient_max),
        )


class _Counted:
    """An objective whose evaluate calls are counted."""

    def __init__(self, objective):
        self.objective, self.calls = objective, 0
        self.exact_hessian = objective.exact_hessian

    def evaluate(self, *args, **kwargs):
        self.calls += 1
        return self.objective.evaluate(*args, **kwargs)


@contextmanager
def threads_for(elements: int, small: int = SMALL_BATCH):
    """One intra-op thread for small batches (``elements`` below ``small``; a mixture density's
    fit counts samples R * n against SMALL_BATCH): there the threads' start-up and synchronisation
    cost more than they save, many times more on a busy machine; the caller's setting otherwise."""
    before = torch.get_num_threads()
    if elements < small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fits_compiled(model, opts: FitOptions) -> bool:
    """Whether ``fit_batch`` fits ``model`` with ``opts`` through the compiled mixture objective."""
    return opts.fused and opts.compile and compiled_path(model)


def group_samples(model, opts: FitOptions) -> int:
    """Samples (R * n) that ``fit_batch`` fits as one problem batch at most: COMPILED_CHUNK where
    ``model`` is fitted by the compiled mixture objective, else CHUNK (larger eager batches only
    thrash the cache)."""
    return COMPILED_CHUNK if fits_compiled(model, opts) else CHUNK


def precompile(model, data, options: FitOptions, singles_first: bool = False) -> None:
    """Where ``fit_batch`` would fit ``model`` by Newton on the compiled mixture path, make (or load
    from inductor's disk cache) its graphs now, on the data data() -> X (R >= 2, n, d), Y (R, n) at
    the model's own values (a few samples do: one graph serves every n); see
    ``MixtureFusedObjective.precompile`` for ``singles_first``. Elsewhere nothing (data() not called)."""
    if options.method != "newton" or not fits_compiled(model, options):
        return
    X, Y = data()
    space = ParamSpace(model, options.bounds)
    u = space.to_unconstrained({k: v.to(X) for k, v in stack_params(model, X.shape[0]).items()})
    make_objective(model, X, Y, space, compile=True).precompile(u, singles_first)


def replication_groups(R: int, n: int, samples: int | None = None) -> list:
    """The groups (slices of the R replications) that ``fit_batch`` fits as one problem batch:
    ``samples`` (by default CHUNK; see ``group_samples``) at most, at least one replication. Each
    group's fits depend on that group alone."""
    size = max(1, (samples or CHUNK) // n)
    return [slice(lo, min(lo + size, R)) for lo in range(0, R, size)]


def fit_batch(
    model, X, Y, init: dict, options: FitOptions | None = None, warn: bool = True, samples: int | None = None
) -> BatchFit:
    """Maximum-likelihood fit of ``model``'s trainable parameters to R data sets.

    X (R, n, d) or (n, d); Y (R, n) or (n,); init {name: (R, *shape)} starting values. The
    model's own parameters are not modified. Replications are fitted together in groups of at
    most CHUNK samples (each replication its own problem either way); on the fused path, small
    groups run side by side, one per torch thread, each on one thread (their results do not
    depend on it).
    ``warn``: a ConvergenceWarning for fits that did not converge. ``samples``: the groups' size in
    samples (R * n) at most, in place of ``group_samples``'s."""
    X, Y = as_batch(X, Y)
    opts = options or FitOptions()
    R, n = Y.shape
    groups = replication_groups(R, n, samples or group_samples(model, opts))
    size = groups[0].stop - groups[0].start

    def fit_group(rows):
        return _fit_batch(model, X[rows], Y[rows], {k: v[rows] for k, v in init.items()}, opts)

    start = time.perf_counter()
    side_by_side = (
        min(torch.get_num_threads(), len(groups)) if size * n < SMALL_BATCH and _shareable(model, opts) else 1
    )
    if side_by_side > 1:
        parts = _side_by_side(fit_group, groups, side_by_side)
    else:
        parts = []
        for rows in groups:
            with threads_for(Y[rows].numel()):
                parts.append(fit_group(rows))
    result = parts[0] if len(parts) == 1 else BatchFit.concat(parts)
    result = dataclasses.replace(result, seconds=time.perf_counter() - start)
    if warn:
        _warn(result, opts)
    return result


def _shareable(model, opts: FitOptions) -> bool:
    """Whether fits of ``model`` may run on threads side by side: the fused path only (the generic
    one's functional_call swaps the shared model's parameters)."""
    return opts.fused and fused_supported(model)


def _side_by_side(fit, items: list, workers: int) -> list:
    """[fit(item) for item in items] on ``workers`` threads side by side, each with one intra-op thread."""
    with threads_for(0), ThreadPoolExecutor(workers) as pool:  # (0 samples: one intra-op thread each)
        return list(pool.map(fit, items))


def _warn(result: BatchFit, opts: FitOptions) -> None:
    advice = (
        "raise fit.max_iter, start closer (init.scale), or use fit=newton"
        if opts.method == "em"
        else "raise fit.max_iter or start closer (init.scale)"
    )
    warn_unconverged(result.status, advice, stacklevel=4)


def _fit_batch(model, X, Y, init, opts) -> BatchFit:
    space = ParamSpace(model, opts.bounds)
    obj = _Counted(
        make_objective(model, X, Y, space, opts.compile) if opts.fused else GenericObjective(model, X, Y, space)
    )
    start = time.perf_counter()
    u = space.to_unconstrained({k: v.to(X) for k, v in init.items()})
    eigen = opts.indefinite == "eigen"
    if opts.method == "em":
        if opts.mstep == "newton" and not obj.exact_hessian:  # no Hessian of Q: BFGS instead
            opts = dataclasses.replace(opts, mstep="bfgs")
        elif opts.mstep == "newton" and eigen:
            opts = dataclasses.replace(opts, mstep="newton_eigen")
        run, solver = _run_em, f"em/{opts.mstep}" + ("" if opts.accelerate == "none" else f"+{opts.accelerate}")
    else:
        solver = ("newton_eigen" if eigen else "newton") if opts.method == "newton" and obj.exact_hessian else "bfgs"
        run = lambda o, s, v, f: _run_direct(o, s, v, f, solver)  # noqa: E731
    u, ll, n_iter, status, trace = run(obj, space, u, opts)
    params = {k: v.detach() for k, v in space.to_natural(u).items()}
    result = BatchFit(
        params=params,
        mean_loglik=ll.detach(),
        n_iter=n_iter.cpu(),
        converged=torch.tensor([s == "converged" for s in status]),
        status=status,
        trace=trace,
        at_bound=space.at_bound(params),
        seconds=time.perf_counter() - start,
        n_evals=obj.calls,
        solver=solver,
        fused=not isinstance(obj.objective, GenericObjective),
    )
    return result


def _thetas(space, contract, u_old, u_new):
    """What the contract compares: natural parameters for rule 'params' (the only rule that reads
    them), else u itself, untransformed."""
    if contract.rule != "params":
        return u_old, u_new
    return space.natural_flat(u_old, 0)[0], space.natural_flat(u_new, 0)[0]


def _inner_rules(inner: SolverOptions):
    """(done, stationary) of an M-step solve: relative change below ftol, or gradient below gtol."""

    def stationary(g):
        return g.abs().amax(1) <= inner.gtol

    def done(f_old, f_new, u_old, u_new, g_new):
        scale = torch.maximum(f_old.abs(), f_new.abs()).clamp_min(1.0)
        return ((f_old - f_new) <= inner.ftol * scale) | stationary(g_new)

    return done, stationary


def _mstep(obj, u, idx, resp, opts, memory=None):
    """One M-step from u (m, p) for problems idx with responsibilities resp (rows aligned);
    ``memory``: a batched strategy object whose curvature pairs carry over between M-steps."""

    def q(v, j, order):
        return obj.evaluate(v, idx[j], order, resp=resp[j])

    if opts.mstep == "torch_lbfgs":

        def one(j):
            jj = torch.tensor([j], device=u.device)
            return lambda v: (lambda e: (e.loss[0], e.grad[0]))(q(v[None], jj, 1))

        return torch.stack([torch_lbfgs_one(one(j), u[j], opts.inner) for j in range(u.shape[0])])
    if memory is None:  # a fresh solver for exactly these problems, rows aligned with u
        return minimize(q, u, opts.mstep, opts.inner, *_inner_rules(opts.inner))[0]
    return minimize(q, u, memory, opts.inner, *_inner_rules(opts.inner), rows=idx)[0]


def _em_iteration(obj, u0, idx, resp0, opts, memory, anderson, cycle):
    """One EM iteration (three in a SQUAREM cycle) of problems idx from u0 (m, p), with their
    responsibilities at u0: (u_new, evaluation with gradient at u_new)."""

    def em_map(v, resp):
        v_new = _mstep(obj, v, idx, resp, opts, memory)
        return v_new, obj.evaluate(v_new, idx, 1)

    if cycle:
        return squarem_cycle(em_map, lambda v: obj.evaluate(v, idx, 0), u0, resp0)
    if anderson is not None:
        return anderson.step(em_map, lambda v: obj.evaluate(v, idx, 1), u0, resp0, idx)
    return em_map(u0, resp0)


def _run_em(obj, space, u, opts):
    contract = opts.contract
    R = u.shape[0]
    ev = obj.evaluate(u, torch.arange(R, device=u.device), 1)
    ll, grad, resp = -ev.loss, -ev.grad, ev.resp
    status = ["running" if torch.isfinite(v) else "failed: non-finite log-likelihood at the start" for v in ll]
    trace = [[float(v)] for v in ll]
    n_iter = torch.zeros(R, dtype=torch.long)
    memory = (
        STRATEGIES[opts.mstep](R, u.shape[1], u, opts.inner.history)
        if opts.warm_mstep and opts.mstep != "torch_lbfgs"
        else None
    )
    squarem = opts.accelerate == "squarem"
    anderson = Anderson(R, u.shape[1], u, opts.anderson_depth) if opts.accelerate == "anderson" else None
    done = 0
    while done < contract.max_iter:
        idx = torch.tensor([r for r in range(R) if status[r] == "running"], dtype=torch.long, device=u.device)
        if idx.numel() == 0:
            break
        cycle = squarem and done >= opts.squarem_after and contract.max_iter - done >= 3
        u_new, ev = _em_iteration(obj, u[idx], idx, resp[idx], opts, memory, anderson, cycle)
        first, done = done + 1, done + (3 if cycle else 1)
        ll_new, grad_new = -ev.loss, -ev.grad
        finite = torch.isfinite(ll_new) & torch.isfinite(u_new).all(1) & torch.isfinite(grad_new).all(1)
        lowered = (ll_new < ll[idx] - rounding(ll[idx])) & finite
        met = contract.met(ll[idx], ll_new, *_thetas(space, contract, u[idx], u_new), grad_new)
        which = f"EM iteration {done}" if not cycle else f"EM iterations {first}-{done}"
        for j, r in enumerate(idx.tolist()):
            n_iter[r] = done
            if not finite[j]:
                status[r] = f"failed: non-finite values after {which}; rolled back to iteration {first - 1}"
            elif lowered[j]:
                status[r] = (
                    f"stalled: {which} would lower the mean log-likelihood by "
                    f"{float(ll[r] - ll_new[j]):.2e}; kept iteration {first - 1}"
                )
            else:
                u[r], ll[r], grad[r], resp[r] = u_new[j], ll_new[j], grad_new[j], ev.resp[j]
                trace[r].append(float(ll_new[j]))
                if met[j]:
                    status[r] = "converged"
    return u, ll, n_iter, ["max_iter" if s == "running" else s for s in status], trace


def _run_direct(obj, space, u, opts, solver):
    contract = opts.contract
    R = u.shape[0]
    with torch.no_grad():
        ll0 = -obj.evaluate(u, torch.arange(R, device=u.device), 0).loss

    def done(f_old, f_new, u_old, u_new, g_new):
        return contract.met(-f_old, -f_new, *_thetas(space, contract, u_old, u_new), g_new)

    rows = []
    inner = dataclasses.replace(opts.inner, max_iter=contract.max_iter)  # an iteration is an optimizer step
    u, f, _, n_iter, status = minimize(obj.evaluate, u, solver, inner, done, contract.stationary, trace=rows)
    status = [s if torch.isfinite(v) else "failed: non-finite log-likelihood at the start" for s, v in zip(status, ll0)]
    trace = [[float(ll0[r])] + [-float(row[r]) for row in rows if not torch.isnan(row[r])] for r in range(R)]
    return u, -f, n_iter, status, trace


def _starts_together(model, X, Y, inits: list, options, groups: list) -> list:
    """[fit_batch(model, X, Y, init) for init in inits], each group of replications fitted from its
    starts together, as one problem batch (start-major) of STARTS_SAMPLES samples at most: each call then
    serves several starts' problems, and the few that take longest share their calls instead of each
    start's paying for its own. A compiled evaluation's rows and the optimizer's do not depend on the rows
    beside them (bit for bit; see ``optim._even`` for the optimizer's), so each fit is the one ``fit_batch``
    gives it alone."""
    S = len(inits)
    per_group = []
    for g in groups:
        Xg, Yg = X[g], Y[g]
        step = max(1, STARTS_SAMPLES // Yg.numel())
        parts = []
        for lo in range(0, S, step):
            some = inits[lo : lo + step]
            init = {k: torch.cat([start[k][g] for start in some]) for k in some[0]}
            count = len(some)
            fit = fit_batch(
                model,
                Xg.repeat(count, 1, 1),
                Yg.repeat(count, 1),
                init,
                options,
                warn=False,
                samples=Yg.numel() * count,
            )
            parts += fit.split(count)
        per_group.append(parts)
    return [BatchFit.concat([parts[s] for parts in per_group]) for s in range(S)]


def fit_best_of(model, X, Y, starts: list, options: FitOptions | None = None, first_on=None) -> BatchFit:
    """Fit from each start in ``starts`` (a non-empty list of init dicts) and keep, per
    replication, the fit with the highest mean log-likelihood; failed fits never win. Where the
    replications' groups would leave torch threads idle, the starts run side by side, one per thread; on
    one thread and the compiled mixture path, each group's starts are fitted together as one problem
    batch (``_starts_together``); else one after another (the same fits every way). ``seconds``
    is the wall time of all the starts. ``first_on`` (s,) sample indices: each start is first
    fitted on those samples alone, then refined on all from where it ended (far starts reach their
    optima for the price of the few last iterations on the whole data)."""
    if not starts:
        raise ValueError("no starting points: init.n_init must be at least 1")

    def score(res):
        ok = torch.tensor([not s.startswith("failed") for s in res.status], device=res.mean_loglik.device)
        return torch.where(ok & torch.isfinite(res.mean_loglik), res.mean_loglik, -torch.inf)

    start = time.perf_counter()
    Xb, Yb = as_batch(X, Y)
    opts = options or FitOptions()

    def fit_each(inits: list, Xs, Ys) -> list:
        # starts side by side where fit_batch would leave cores idle (fewer groups than threads); each start
        # then runs on one thread, as a small group does, so its fit is the same either way
        def fit_one(init):
            return fit_batch(model, Xs, Ys, init, options, warn=False)

        side_by_side = min(torch.get_num_threads(), len(inits))
        groups = replication_groups(*Ys.shape, group_samples(model, opts))
        if side_by_side > 1 and len(groups) < side_by_side and _shareable(model, opts):
            return _side_by_side(fit_one, inits, side_by_side)
        if side_by_side == 1 and len(inits) > 1 and fits_compiled(model, opts):  # one thread: a sweep's worker
            return _starts_together(model, Xs, Ys, inits, options, groups)
        return [fit_one(init) for init in inits]

    if first_on is not None:
        starts = [fit.params for fit in fit_each(starts, Xb[:, first_on], Yb[:, first_on])]
    fits = fit_each(starts, Xb, Yb)
    best = fits[0]
    for res in fits[1:]:
        best = best.replace_where(score(res) > score(best), res)
    _warn(best, opts)
    return dataclasses.replace(best, seconds=time.perf_counter() - start)  # wall time, starts side by side or not
