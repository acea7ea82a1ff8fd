"""Parametric-bootstrap likelihood-ratio tests.

    test = contamination_test(Estimator(model, "newton", n_init=3), X, y, B=999)
    print(test.summary())

Under "no contamination" the gate's weight sits on the boundary of the parameter space and the
prompt is not identified, so LR = 2 (loglik of the alternative's fit - loglik of the null) has no
chi-square limit. Its null distribution is simulated instead: B data sets drawn from the null at
the observed X, each refitted by exactly the procedure of the observed fit (the same estimator:
method, bounds, starts; every refit numbered as the observed fit, so its random starts are drawn
from the same seeds), all B in batched calls. p = (1 + #{LR*_b >= LR}) / (B + 1).

When the null is fully known (the contamination test: f0 is frozen), LR and the LR*_b are
exchangeable under H0, so the test's level is exact at any B with (B + 1) alpha an integer,
whatever the procedure's optimum quality. A refit whose statistic is not finite counts as
LR*_b >= LR; a refit that stopped unconverged (stalled, max_iter) does too under the default rule
``unconverged='conservative'`` (it can only raise p), or enters as fitted under 'as_fitted' (the
observed statistic was computed by the same procedure, so exchangeability still holds). Both are
counted. LR is clamped at 0 (the null is the limit of the alternative, tau -> -inf), and raw
negatives are counted.

``iterations`` K (default 10) caps every fit of the alternative at K iterations of the estimator's
method from each of its starts, in the spirit of the EM test of Chen & Li (2009): a fixed, cheap
procedure whose statistic 2 (loglik after K iterations - loglik of the null) the bootstrap
calibrates exactly as it does the MLE's (it is not clamped; reaching the cap is not a failure).
Under "no contamination" the alternative's supremum is a spike on the box's boundary that the
optimizer approaches for hundreds of iterations; the capped statistic never goes there and costs
20-40x less (experiments/contamination/contamination_pilot.py compares the two). ``iterations=None``: the MLE
(the estimator's own stopping rule).

``starts`` chooses where the alternative's fit starts: the estimator's own init policy (None, the
default), or ``'anchored'``: at the null, in the spirit of Chen & Li's EM test: each prompt's
expert at the pre-trained expert's parameters and its variance at the pre-trained one's, the gate's
slopes 0 and its intercepts on the grid ``ANCHOR_TAUS`` (one start each, the best kept). A prompt
near f0 is then found by a few iterations from where it is, not from a random start that the
iterations spend emptying the gate. (In the distinguishable setting the prompt's family differs
from f0's, so the anchor is the prompt of its family closest to f0 and the statistic can be
negative; the bootstrap calibrates it all the same.) The contamination test's default is
'anchored' (chosen by the pilot and the power study in experiments/contamination/).

``broad`` adds a second part for a few observations far from f0, which a prompt started at f0 does
not reach in a few iterations: the likelihood ratio against a fixed broad contamination of f0
(``broad.broad_statistics``, variance ratios ``broad``; None: the fitted part alone). The two parts
are combined by their smallest bootstrap p-value, calibrated on the same B draws
(``combine.pooled_pvalues``), so the test stays exact."""

import dataclasses
import time
import warnings

import torch
from tqdm import tqdm

from ..estimation.convergence import ConvergenceWarning
from ..estimation.driver import CHUNK
from ..estimation.estimator import Estimator
from ..estimation.inputs import fit_data
from ..model.mixture import ContaminatedMoE
from ..model.names import variance_name
from .broad import RATIOS, broad_statistics, check_ratios
from .results import BootstrapTest
from .starts import STARTS, given_starts, split_starts

RULES = ("conservative", "as_fitted")
ITERATIONS = 10  # the default cap on the alternative's fit
START = "anchored"  # the contamination test's default starts


def contamination_test(
    estimator: Estimator,
    X,
    y,
    B: int = 999,
    seed: int = 0,
    unconverged: str = "conservative",
    progress: bool = True,
    iterations: int | None = ITERATIONS,
    starts: str = START,
    broad=RATIOS,
) -> BootstrapTest:
    """H0: y | x follows the frozen pre-trained component alone; H1: ``estimator``'s contaminated
    model (its prompts and gate), fitted by at most ``iterations`` iterations (None: to
    convergence) from ``starts`` ('policy' or 'anchored'), and (unless ``broad`` is None) a broad
    contamination of f0 with the variance ratios ``broad``; see the module docstring. X (n, d), y (n,)."""
    start = time.perf_counter()
    _check(B, seed, unconverged, iterations)
    _check_contaminated(estimator, "estimator")
    given = given_starts(estimator.spec, starts)
    if broad is not None:
        check_ratios(broad)
    estimator = _capped(estimator, iterations)
    observed = _fit(estimator, X, y, given)
    X0 = observed.X[0]
    null = estimator.spec.pretrained
    Ystar = torch.stack([null_draw(null, X0, seed, b) for b in range(B)])
    Xstar = X0.expand(B, *X0.shape)
    boot = _refit(estimator, Xstar, Ystar, progress, "H1", given)
    parts = broad is not None
    observed_parts = _parts(observed.loglik, null, observed.X, observed.Y, broad)  # (1, J)
    boot_parts = _parts(boot.loglik, null, Xstar, Ystar, broad)  # (B, J)
    return BootstrapTest(
        test="contamination",
        raw_statistic=float(observed_parts[0, 0]),
        raw_boot=boot_parts[:, 0].tolist(),
        boot_status=list(boot.status),
        boot_degenerate=boot.degenerate,
        observed=observed,
        rule=unconverged,
        seconds=time.perf_counter() - start,
        iterations=iterations,
        starts=starts,
        broad=tuple(float(k) for k in broad) if parts else None,
        raw_broad=float(observed_parts[0, 1]) if parts else None,
        boot_broad=boot_parts[:, 1].tolist() if parts else None,
    )


def contamination_statistics(
    estimator: Estimator,
    X,
    y,
    iterations: int | None = ITERATIONS,
    progress: bool = False,
    starts: str = START,
    broad=RATIOS,
) -> torch.Tensor:
    """The contamination test's statistic on each of R data sets, by the code path of
    ``contamination_test``: column 0, 2 (loglik of ``estimator``'s fit capped at ``iterations``
    iterations from ``starts`` - loglik of the frozen pre-trained component alone), raw (not
    clamped), every fit numbered 0 as the test numbers its own; column 1 (unless ``broad`` is None)
    the broad-prompt part. X (n, d) or (R, n, d), y (n,) or (R, n) -> (R, 2) or (R, 1) float64.
    Studies of the test's size and power call this and ``combine.pooled_pvalues`` on its rows, so
    they measure the test users run."""
    _check_contaminated(estimator, "estimator")
    _check_iterations(iterations)
    given = given_starts(estimator.spec, starts)
    if broad is not None:
        check_ratios(broad)
    X, Y = fit_data(estimator.spec, X, y, estimator.dtype, estimator.device)
    refits = _refit(_capped(estimator, iterations), X, Y, progress, "H1", given)
    return _parts(refits.loglik, estimator.spec.pretrained, X, Y, broad)


def _parts(loglik: torch.Tensor, null, X: torch.Tensor, Y: torch.Tensor, broad) -> torch.Tensor:
    """The contamination test's statistic of each data set, one column a part: the fitted part
    (``_statistics``) and, unless ``broad`` is None, the broad-prompt part. -> (R, 1 or 2) float64."""
    parts = [_statistics(loglik, null, X, Y)]
    if broad is not None:
        parts.append(broad_statistics(null, X, Y, broad))
    return torch.stack(parts, dim=1)


def prompts_test(
    null_estimator: Estimator,
    estimator: Estimator,
    X,
    y,
    B: int = 999,
    seed: int = 0,
    unconverged: str = "conservative",
    progress: bool = True,
    iterations: int | None = ITERATIONS,
    starts: str = "policy",
) -> BootstrapTest:
    """H0: ``null_estimator``'s model (K prompts), fitted to convergence; H1: ``estimator``'s (more
    prompts, the same pre-trained component), fitted by at most ``iterations`` iterations from
    ``starts``: the estimator's policy, or 'anchored' (one more prompt only): at each data set's own
    fitted null, one of its components split in two (``split_starts``). B data sets are drawn from
    the fitted H0 at the observed X and both models are refitted on each; a refit of either that
    fails or (by the rule) stops unconverged counts as LR*_b >= LR."""
    start = time.perf_counter()
    _check(B, seed, unconverged, iterations)
    _check_contaminated(null_estimator, "null_estimator")
    _check_contaminated(estimator, "estimator")
    K0, K1 = len(null_estimator.spec.prompts), len(estimator.spec.prompts)
    if K1 <= K0:
        raise ValueError(f"the alternative must have more prompts than the null to be nested; got {K1} against {K0}")
    if starts not in STARTS:
        raise ValueError(f"starts must be one of {', '.join(STARTS)}, got {starts!r}")
    if starts == "anchored" and K1 != K0 + 1:
        raise ValueError(f"anchored starts split one component of the null: one more prompt, got {K1} against {K0}")
    estimator = _capped(estimator, iterations)
    observed0 = null_estimator.fit(X, y, replications=[0])
    given = split_starts(observed0.params, estimator.spec) if starts == "anchored" else None
    observed = _fit(estimator, X, y, given)
    X0 = observed.X[0]
    fitted_null = observed0.model(0)
    Ystar = torch.stack([fitted_null.sample(X0, generator=_generator(seed, b)) for b in range(B)])
    Xstar = X0.expand(B, *X0.shape)
    boot0 = _refit(null_estimator, Xstar, Ystar, progress, f"H0 ({K0} prompt{'s' * (K0 > 1)})")
    given = split_starts(boot0.params, estimator.spec) if starts == "anchored" else None
    boot1 = _refit(estimator, Xstar, Ystar, progress, f"H1 ({K1} prompts)", given, batched=given is not None)
    status = [s1 if s0 == "converged" else f"null {s0}" for s0, s1 in zip(boot0.status, boot1.status)]
    return BootstrapTest(
        test=f"prompts {K0} vs {K1}",
        raw_statistic=_lr(observed.loglik[0], observed0.loglik[0]),
        raw_boot=[_lr(boot1.loglik[b], boot0.loglik[b]) for b in range(B)],
        boot_status=status,
        boot_degenerate=boot1.degenerate,
        observed=observed,
        rule=unconverged,
        seconds=time.perf_counter() - start,
        observed_null=observed0,
        iterations=iterations,
        starts=starts,
    )


def with_variance_floor(estimator: Estimator, ratio: float) -> Estimator:
    """The same procedure with every prompt's variance bounded below by ``ratio`` times the
    pre-trained component's (the constrained MLE of Hathaway, 1985): a spike on a few
    observations can then gain at most about log(1 / ratio) / 2 per observation."""
    _check_contaminated(estimator, "estimator")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise ValueError(f"the variance floor ratio must be a number in (0, 1), got {ratio!r}")
    spec, options = estimator.spec, estimator.options
    bounds = dict(options.bounds or {})
    if not bounds.get("positive"):
        raise ValueError(
            "the variance floor bounds each prompt's variance in [floor, the variances' upper bound]; "
            "give fit.bounds.positive [lo, hi], or no floor"
        )
    high = float(bounds["positive"][1])
    floor = ratio * float(spec.pretrained.nu)
    if not floor < high:
        raise ValueError(f"the variance floor {floor:g} is not below the variances' upper bound {high:g}")
    bounds.update({variance_name(k): [floor, high] for k in range(len(spec.prompts))})
    return estimator.clone(bounds=bounds)


def _capped(estimator: Estimator, iterations: int | None) -> Estimator:
    return estimator if iterations is None else estimator.clone(max_iter=iterations)


def _fit(estimator: Estimator, X, y, starts=None):
    """The observed fit of the alternative (numbered 0, as every refit) from ``starts`` (None: the
    estimator's policy); a capped fit's stop at its cap is not worth a warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*\(max_iter\)", category=ConvergenceWarning)
        return estimator.fit(X, y, start=starts, replications=[0])


def _check_contaminated(estimator, name: str):
    """A one-line ValueError unless ``estimator`` is an Estimator of a contaminated mixture."""
    if not isinstance(estimator, Estimator):
        raise ValueError(
            f"{name} must be an Estimator (e.g. Estimator(model, 'newton')), got {type(estimator).__name__}"
        )
    if not isinstance(estimator.spec, ContaminatedMoE):
        raise ValueError(
            f"{name}'s model is a {type(estimator.spec).__name__}; these tests need a ContaminatedMoE "
            "(a frozen pre-trained component and its prompts)"
        )


def _check(B, seed, unconverged, iterations):
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if isinstance(B, bool) or not isinstance(B, int) or B < 19:
        raise ValueError(
            f"B must be an integer of at least 19 (the smallest p-value is 1/(B+1), and 0.05 needs B >= 19), got {B!r}"
        )
    if unconverged not in RULES:
        raise ValueError(f"unconverged must be one of {', '.join(RULES)}, got {unconverged!r}")
    _check_iterations(iterations)


def _check_iterations(iterations):
    if iterations is not None and (isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1):
        raise ValueError(
            f"iterations must be a positive integer (the cap on the alternative's fit) or None, got {iterations!r}"
        )


@dataclasses.dataclass
class Refits:
    """What the test keeps of B refits: loglik (B,), status and degenerate (lists over B), the fitted
    parameters {name: (B, ...)}."""

    loglik: torch.Tensor
    status: list
    degenerate: list
    params: dict


def _refit(estimator, Xstar, Ystar, progress: bool, what: str, starts=None, batched=False) -> Refits:
    """The estimator's fit of every data set (Xstar (B, n, d), Ystar (B, n)), each numbered 0 (the
    observed fit's starts) and from ``starts`` (None: the estimator's policy; a list of dicts of
    shared values, or with ``batched`` of per-data-set values (B, ...)), in batched calls of the
    driver's chunk size."""
    B, n = Ystar.shape
    step = max(1, CHUNK // n)
    loglik, status, degenerate, params = [], [], [], []
    with (
        tqdm(total=B, desc=f"bootstrap refits, {what}", unit="fit", disable=not progress) as bar,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", ConvergenceWarning)  # unconverged refits are counted in the result
        for lo in range(0, B, step):
            hi = min(lo + step, B)
            given = [{k: v[lo:hi] for k, v in one.items()} for one in starts] if batched else starts
            part = estimator.fit(Xstar[lo:hi], Ystar[lo:hi], start=given, replications=[0] * (hi - lo))
            loglik.append(part.loglik.cpu())
            status += part.status
            degenerate += [bool(d) for d in part.degenerate]
            params.append(part.params)
            bar.update(hi - lo)
    return Refits(torch.cat(loglik), status, degenerate, {k: torch.cat([p[k] for p in params]) for k in params[0]})


def null_draw(component, X0, seed: int, b: int) -> torch.Tensor:
    """The contamination test's bootstrap draw b under seed ``seed``: y ~ f0(. | h0(x), nu0) at each
    row of X0 (n, d) -> (n,), from draw b's own generator (independent of B and of the batching)."""
    with torch.no_grad():
        return component.density.sample(component.mean(X0), component.nu.expand(X0.shape[0]), _generator(seed, b))


def _statistics(loglik: torch.Tensor, null, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """2 (loglik - the null component's log-likelihood) of each data set; loglik (R,), X (R, n, d),
    Y (R, n) -> (R,) float64 on the CPU."""
    with torch.no_grad():
        null_loglik = torch.stack([null(x, y).sum() for x, y in zip(X, Y)])
    return 2.0 * (loglik.cpu().double() - null_loglik.cpu().double())


def _generator(seed: int, b: int):
    """Data set b's own generator: the draws do not depend on B or on the batching."""
    return torch.Generator().manual_seed(seed * 1_000_003 + b)


def _lr(loglik_alternative, loglik_null) -> float:
    return 2.0 * (float(loglik_alternative) - float(loglik_null))
