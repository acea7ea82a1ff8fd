"""The estimator: configured once, ``fit(X, y)`` on plain arrays, one ``FitResults`` back.

    res = Estimator(model, method="em").fit(X, y)     # X (n, d) or (R, n, d); y (n,) or (R, n)
    print(res.summary())

The caller's model is the specification (structure, frozen pre-trained component); it is never
mutated. Without a start, ``n_init`` random starts are run and the best fit of each replication
is kept."""

import copy
import dataclasses

import torch

from ..model.regression import RegressionMoE
from .device import resolve_device, resolve_dtype
from .driver import LS_METHODS, METHOD_DEFAULTS, FitOptions, fit_best_of
from .init import starting_points
from .inputs import check_model, fit_data
from .ls_driver import fit_least_squares
from .ls_results import LeastSquaresResults
from .results import FitResults


class Estimator:
    """Maximum-likelihood estimation of a mixture's trainable parameters (a ``ContaminatedMoE``, a
    ``MixtureOfExperts``), or least squares for a ``RegressionMoE``.

    method: 'em' (default; EM with the batched L-BFGS M-step), 'em_torch' (EM with a
    torch.optim.LBFGS M-step per replication), 'direct' (BFGS on the marginal log-likelihood) or
    'newton' (Newton with the exact Hessian; the fastest). ``tol``, ``rule``, ``gtol``,
    ``max_iter``, ``bounds`` and any other ``FitOptions`` field override the method's defaults.
    init: 'random' (``n_init`` seeded starts, default 5) or 'near_truth' (``truth`` {name: tensor}
    plus noise of size ``init_scale``, ``n_init`` draws, default 1: the paper's protocol; a truth of
    fewer components than the model is spread over them, ``init.spread_truth``). device: 'auto', 'cpu', 'cuda', 'mps';
    dtype: 'float64' (default) or 'float32'. ``options``: a complete ``FitOptions`` instead.
    ``subsample`` (a mixture density's random starts): where n exceeds twice it, each start is first
    fitted on that many samples drawn at random (seeded ``seed``), then refined on all of them from
    where it ended (``driver.fit_best_of``'s ``first_on``).
    A ``RegressionMoE`` takes method 'lm' (its default: Levenberg-Marquardt), 'trust_newton',
    'ls_lbfgs' or 'sgd' (the published protocol; replication r's shuffles are seeded ``seed + r``)
    and gives ``LeastSquaresResults`` (see ``ls_driver.py``)."""

    def __init__(
        self,
        model,
        method: str | None = None,
        *,
        init: str = "random",
        n_init: int | None = None,
        seed: int = 0,
        truth: dict | None = None,
        init_scale: float = 0.1,
        device: str = "cpu",
        dtype: str = "float64",
        options: FitOptions | None = None,
        subsample: int | None = None,
        **fit_options,
    ):
        if n_init is None:
            n_init = 5 if init == "random" else 1
        if isinstance(n_init, bool) or not isinstance(n_init, int) or n_init < 1:
            raise ValueError(f"n_init must be an integer of at least 1, got {n_init!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or not init_scale >= 0:
            raise ValueError(f"init_scale must be a number of at least 0, got {init_scale!r}")
        check_model(model)
        regression = isinstance(model, RegressionMoE)
        if subsample is not None and (isinstance(subsample, bool) or not isinstance(subsample, int) or subsample < 1):
            raise ValueError(f"subsample must be an integer of at least 1 or None, got {subsample!r}")
        if subsample is not None and (regression or init != "random"):
            raise ValueError("subsample is for the random starts of a mixture density (init='random')")
        method = method or (options.method if options else "lm" if regression else "em")
        if regression != (method in LS_METHODS):
            mixture_methods = [m for m in METHOD_DEFAULTS if m not in LS_METHODS]
            kind, methods = ("a RegressionMoE", LS_METHODS) if regression else ("a mixture density", mixture_methods)
            raise ValueError(f"{kind} is fitted by method {' | '.join(methods)}, got {method!r}")
        self.options = options or FitOptions.for_method(method, **fit_options)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.spec = copy.deepcopy(model).to(dtype=self.dtype, device=self.device)
        self.method, self.init, self.n_init, self.seed = method, init, n_init, seed
        self.truth, self.init_scale, self.subsample = truth, init_scale, subsample

    def fit(self, X, y, start: dict | list | None = None, replications=None) -> FitResults:
        """Fit to X (n, d) or (R, n, d) and y (n,) or (R, n), numpy or torch, any float dtype.
        ``start`` {name: value of the parameter's shape, or (R, *shape)} replaces the init policy;
        parameters it leaves out start from the policy's first start; a list of such dicts is a set
        of starts, of which each replication keeps its best fit. ``replications`` (R numbers,
        default 0..R-1) seed each data set's starts, so that a data set fitted alone, as number r,
        starts where it starts in any batch that numbers it r."""
        X, Y = fit_data(self.spec, X, y, self.dtype, self.device)
        numbers = list(range(Y.shape[0])) if replications is None else [int(r) for r in replications]
        if len(numbers) != Y.shape[0]:
            raise ValueError(
                f"replications has {len(numbers)} numbers for {Y.shape[0]} data sets; give one per data set"
            )
        starts = starting_points(
            self.spec,
            Y,
            self.init,
            lambda i, j: self.seed + 1000 * i + numbers[j],
            truth=self.truth,
            scale=self.init_scale,
            n_init=1 if start else self.n_init,
        )
        if start:
            given = start if isinstance(start, list) else [start]
            if not all(isinstance(one, dict) for one in given):
                raise ValueError("start must be a dict {parameter name: value} or a list of such dicts")
            starts = [self._with_start(starts[0], one, X.shape[0]) for one in given]
        if isinstance(self.spec, RegressionMoE):
            seeds = torch.tensor([self.seed + r for r in numbers])
            fit = fit_least_squares(self.spec, X, Y, starts, self.options, seeds)
            return LeastSquaresResults(self.spec, fit, X, Y)
        n = Y.shape[1]
        first_on = None
        if self.subsample and not start and n > 2 * self.subsample:
            gen = torch.Generator().manual_seed(self.seed)
            first_on = torch.randperm(n, generator=gen)[: self.subsample].sort().values.to(X.device)
        fit = fit_best_of(self.spec, X, Y, starts, self.options, first_on=first_on)
        return FitResults(self.spec, fit, X, Y)

    def clone(self, **changes) -> "Estimator":
        """The same estimator with some settings changed: any argument of ``Estimator`` (``model``,
        ``method``, ``init``, ``n_init``, ``seed``, ``truth``, ``init_scale``, ``subsample``, ``device``,
        ``dtype``) or any ``FitOptions`` field (``max_iter``, ``bounds``, ...). A new ``method`` starts from that
        method's defaults; otherwise the options are this estimator's with the changes."""
        arguments = dict(
            model=self.spec,
            method=self.method,
            init=self.init,
            n_init=self.n_init,
            seed=self.seed,
            truth=self.truth,
            init_scale=self.init_scale,
            subsample=self.subsample,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
        )
        fields = {f.name for f in dataclasses.fields(FitOptions)} - {"method"}
        unknown = sorted(set(changes) - set(arguments) - fields)
        if unknown:
            raise ValueError(
                f"unknown setting(s) {', '.join(unknown)}; an estimator takes {', '.join(arguments)} "
                f"and the fit options {', '.join(sorted(fields))}"
            )
        options = {k: changes.pop(k) for k in list(changes) if k in fields}
        arguments.update(changes)
        if arguments["method"] != self.method:
            return Estimator(**arguments, **options)
        return Estimator(**arguments, options=dataclasses.replace(self.options, **options))

    def _with_start(self, base: dict, start: dict, R: int) -> dict:
        out = dict(base)
        for name, value in start.items():
            if name not in base:
                raise ValueError(f"unknown parameter {name!r} in start; the model's are {list(base)}")
            shape = base[name].shape[1:]
            v = torch.as_tensor(value, dtype=torch.float64)
            if v.shape == shape:
                v = v.expand(R, *shape)
            if tuple(v.shape) != (R, *shape):
                raise ValueError(
                    f"start value of {name} has shape {tuple(v.shape)}, expected {tuple(shape)} or {(R, *shape)}"
                )
            out[name] = v.clone()
        return out
