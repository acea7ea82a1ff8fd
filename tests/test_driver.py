"""Properties of the fitting driver: monotone EM, frozen parts fixed, recovery, batched == single,
and the convergence contract (every status, every method)."""

import dataclasses
import warnings

import pytest
import torch

import softmoe_torch.estimation.driver as driver
from softmoe_torch.estimation.convergence import Contract, ConvergenceWarning
from softmoe_torch.estimation.driver import METHOD_DEFAULTS, FitOptions, fit_batch
from softmoe_torch.estimation.init import near_truth
from softmoe_torch.metrics.parameters import paper_view
from softmoe_torch.settings.setting import Setting
from softmoe_torch.study.simulate import simulate

pytestmark = pytest.mark.usefixtures("one_thread")
ALL = ["em", "em_newton", "em_torch", "direct", "newton"]


def problem(compose_cfg, name, n, R, seed=0, scale=0.1):
    setting = Setting(compose_cfg([f"setting={name}"]).setting)
    X, Y = simulate(setting, n, range(R), seed)
    model = setting.model()
    return setting, model, X, Y, near_truth(model, setting.truth(n), R, scale, seed + 1)


@pytest.mark.parametrize(
    "mstep,accelerate",
    [
        ("lbfgs", "anderson"),
        ("newton", "anderson"),
        ("lbfgs", "squarem"),
        ("lbfgs", "none"),
        ("bfgs", "none"),
        ("torch_lbfgs", "none"),
    ],
)
@pytest.mark.parametrize("fused", [True, False])
def test_em_never_lowers_the_likelihood(compose_cfg, mstep, accelerate, fused):
    _, model, X, Y, init = problem(compose_cfg, "nondistinguishable_eta", 300, 2, scale=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # stopped early on purpose
        res = fit_batch(
            model, X, Y, init, FitOptions(method="em", mstep=mstep, accelerate=accelerate, max_iter=9, fused=fused)
        )
    assert res.fused == fused
    for trace in res.trace:
        steps = torch.diff(torch.tensor(trace))
        assert len(trace) > 3
        assert bool((steps >= -1e-12).all()), steps.min()


@pytest.mark.parametrize("method", ALL)
def test_frozen_component_and_callers_model_are_bit_identical_after_fit(compose_cfg, method):
    _, model, X, Y, init = problem(compose_cfg, "distinguishable", 500, 2)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    res = fit_batch(model, X, Y, init, FitOptions.for_method(method, max_iter=10))
    assert not any(name.startswith("pretrained") for name in res.params)
    for k, v in model.state_dict().items():  # the frozen part never moves, and fitting never writes into the model
        assert torch.equal(v, own[k])


def test_recovers_the_truth_in_the_distinguishable_setting(compose_cfg):
    setting, model, X, Y, init = problem(compose_cfg, "distinguishable", 20000, 1)
    res = fit_batch(model, X, Y, init, FitOptions())
    assert res.status == ["converged"] and res.fused and res.solver == "em/lbfgs+anderson"
    est, truth = paper_view(res.params), paper_view({k: v[None] for k, v in setting.truth(20000).items()})
    assert float((est["eta"] - truth["eta"]).norm()) < 0.02
    assert float((est["beta"] - truth["beta"]).norm()) < 0.15
    assert abs(float(est["exp_tau"] - truth["exp_tau"])) < 0.4
    assert abs(float(est["nu"] / truth["nu"]) - 1) < 0.05


PAPER_STYLE_EM = {
    "warm_mstep": False,
    "mstep": "bfgs",
    "accelerate": "none",
    "rule": "params",
    "tol": 1e-6,
    "inner": {"max_iter": 200},
}  # a fresh M-step solver each iteration, solved to convergence


ANDERSON_PATH = 2  # iterations: see test_batched_fits_match_single_fits


@pytest.mark.parametrize(
    "method,name,extra",
    [
        ("em", "distinguishable", {}),
        ("em_newton", "nondistinguishable_eta", {}),
        ("em", "nondistinguishable_eta", {"accelerate": "squarem", "squarem_after": 0}),
        ("em", "distinguishable", {"accelerate": "none"}),
        ("direct", "nondistinguishable_eta", {}),
        ("newton", "nondistinguishable_eta", {}),
        ("em_torch", "distinguishable", {}),
        ("em", "distinguishable", PAPER_STYLE_EM),
    ],
)
def test_batched_fits_match_single_fits(compose_cfg, method, name, extra):
    """Also with a fresh M-step solver per iteration (warm_mstep=False) once some replications stop.
    Equal up to float rounding (batched matmuls may sum in another order). Anderson's least-squares
    step can amplify that rounding into a slightly different path to the same optimum: there the
    iteration counts may differ by ANDERSON_PATH and the log-likelihoods by the tolerance."""
    _, model, X, Y, init = problem(compose_cfg, name, 400, 3)
    opts = FitOptions.for_method(method, **extra)
    batch = fit_batch(model, X, Y, init, opts)
    anderson = opts.accelerate == "anderson"
    for r in range(3):
        single = fit_batch(model, X[r], Y[r], {k: v[r : r + 1] for k, v in init.items()}, opts)
        assert single.status[0] == batch.status[r]
        assert abs(int(single.n_iter[0]) - int(batch.n_iter[r])) <= (ANDERSON_PATH if anderson else 0)
        assert float(single.mean_loglik[0]) == pytest.approx(
            float(batch.mean_loglik[r]), rel=0, abs=opts.tol if anderson else 1e-9 * abs(float(batch.mean_loglik[r]))
        )


def on_two_threads(call):
    """call() with two torch threads (the tests' one_thread fixture gives one), then one again."""
    torch.set_num_threads(2)
    try:
        return call()
    finally:
        torch.set_num_threads(1)


@pytest.mark.parametrize("method", ["em", "newton"])
def test_groups_fitted_side_by_side_equal_groups_fitted_one_after_another(compose_cfg, monkeypatch, method):
    """Groups of replications run on threads side by side (fused path), each on one torch thread:
    the same numbers as one group after another."""
    _, model, X, Y, init = problem(compose_cfg, "distinguishable", 400, 6)
    monkeypatch.setattr(driver, "CHUNK", 800)  # groups of two replications
    opts = FitOptions.for_method(method)
    alone = fit_batch(model, X, Y, init, opts)
    side_by_side = on_two_threads(lambda: fit_batch(model, X, Y, init, opts))
    assert torch.equal(alone.n_iter, side_by_side.n_iter) and alone.status == side_by_side.status
    for k in alone.params:
        assert torch.equal(alone.params[k], side_by_side.params[k]), k


def test_compiled_mixture_fits_are_grouped_by_more_samples(compose_cfg):
    """The compiled mixture path fits COMPILED_CHUNK samples in one problem batch, every other path
    CHUNK: at n = 2e4, 50 replications against 5."""
    from softmoe_torch import AffineExpert, Component, Gaussian, MixtureOfExperts, SoftmaxGate

    moe = MixtureOfExperts([Component(AffineExpert(1), Gaussian()) for _ in range(2)], SoftmaxGate(1))
    paper = problem(compose_cfg, "distinguishable", 100, 1)[1]
    compiled, eager = FitOptions.for_method("newton", compile=True), FitOptions.for_method("newton")
    assert driver.group_samples(moe, compiled) == driver.COMPILED_CHUNK > driver.CHUNK
    others = [(moe, eager), (moe, FitOptions.for_method("newton", compile=True, fused=False)), (paper, compiled)]
    assert all(driver.group_samples(model, opts) == driver.CHUNK for model, opts in others)
    groups = lambda samples: [g.stop - g.start for g in driver.replication_groups(120, 20_000, samples)]  # noqa: E731
    assert groups(driver.COMPILED_CHUNK) == [50, 50, 20] and groups(None) == [5] * 24


def test_precompile_acts_on_newton_fits_of_the_compiled_mixture_path_alone(monkeypatch):
    from softmoe_torch import AffineExpert, Component, Gaussian, MixtureOfExperts, SoftmaxGate
    from softmoe_torch.estimation.fused_mixture import MixtureFusedObjective

    calls = []
    monkeypatch.setattr(MixtureFusedObjective, "precompile", lambda self, u, first: calls.append((u.shape, first)))
    moe = MixtureOfExperts([Component(AffineExpert(1), Gaussian()) for _ in range(2)], SoftmaxGate(1)).double()
    X, Y = torch.randn(2, 10, 1, dtype=torch.float64), torch.randn(2, 10, dtype=torch.float64)
    for method, compile in [("newton", False), ("em", True), ("direct", True), ("newton", True)]:
        data = lambda: calls.append("data") or (X, Y)  # noqa: E731
        driver.precompile(moe, data, FitOptions.for_method(method, compile=compile), singles_first=True)
    assert calls == ["data", ((2, 8), True)]  # gate (2) and two experts' slope, bias and variance


def test_starts_fitted_side_by_side_equal_starts_fitted_one_after_another(compose_cfg, monkeypatch):
    """Three starts of one data set, each fitted on its own thread where torch has two: the
    same best fit, number for number, as the starts one after another on one thread."""
    from softmoe_torch.estimation.driver import fit_best_of

    pools = []

    class Pool(driver.ThreadPoolExecutor):
        def __init__(self, workers):
            pools.append(workers)
            super().__init__(workers)

    monkeypatch.setattr(driver, "ThreadPoolExecutor", Pool)
    _, model, X, Y, init = problem(compose_cfg, "distinguishable", 2000, 1, scale=0.3)
    starts = [init] + [problem(compose_cfg, "distinguishable", 2000, 1, seed=s, scale=0.3)[4] for s in (5, 9)]
    opts = FitOptions.for_method("newton")
    alone = fit_best_of(model, X, Y, starts, opts)
    side_by_side = on_two_threads(lambda: fit_best_of(model, X, Y, starts, opts))
    assert torch.equal(alone.mean_loglik, side_by_side.mean_loglik) and alone.status == side_by_side.status
    assert alone.n_evals == side_by_side.n_evals and pools == [2]  # one pool of two threads, the second time only
    for k in alone.params:
        assert torch.equal(alone.params[k], side_by_side.params[k]), k


def moe_problem(R, n, starts, compile=False):
    """A two-expert mixture of experts, R data sets of its own at n, and ``starts`` starts near its values."""
    from softmoe_torch import AffineExpert, Component, Gaussian, MixtureOfExperts, SoftmaxGate
    from softmoe_torch.estimation.params import stack_params

    torch.manual_seed(0)
    model = MixtureOfExperts([Component(AffineExpert(1), Gaussian()) for _ in range(2)], SoftmaxGate(1)).double()
    with torch.no_grad():
        model.gate.beta.fill_(4.0)
        model.components[0].expert.eta.fill_(2.0)
        model.components[1].expert.eta.fill_(-2.0)
        model.components[1].expert.bias.fill_(1.0)
    X = torch.randn(R, n, 1, dtype=torch.float64)
    Y = torch.stack([model.sample(X[r]) for r in range(R)])
    truth = stack_params(model, R)
    inits = [{k: v + 0.3 * torch.randn_like(v) for k, v in truth.items()} for _ in range(starts)]
    return model, X, Y, inits, FitOptions.for_method("newton", compile=compile)


def test_a_batch_fit_split_in_parts_joins_back_to_itself(compose_cfg):
    """``BatchFit.split``: consecutive equal parts, the time and evaluations in the first; unequal parts refused."""
    _, model, X, Y, init = problem(compose_cfg, "distinguishable", 300, 6)
    fit = fit_batch(model, X, Y, init, FitOptions.for_method("newton"))
    parts = fit.split(3)
    assert [len(p) for p in parts] == [2, 2, 2] and [p.n_evals for p in parts] == [fit.n_evals, 0, 0]
    assert [p.seconds for p in parts] == [fit.seconds, 0.0, 0.0] and parts[1].status == fit.status[2:4]
    joined = driver.BatchFit.concat(parts)
    for name in ("mean_loglik", "n_iter", "converged"):
        assert torch.equal(getattr(joined, name), getattr(fit, name)), name
    assert joined.trace == fit.trace and joined.at_bound == fit.at_bound and joined.n_evals == fit.n_evals
    assert all(torch.equal(joined.params[k], v) for k, v in fit.params.items())
    with pytest.raises(ValueError, match="6 fits do not split into 4"):
        fit.split(4)


def test_starts_fitted_together_equal_starts_fitted_one_after_another(monkeypatch):
    """``_starts_together``: each group's starts as one problem batch (here in batches of two starts,
    then one) gives each start the fit it gets alone, bit for bit (eagerly here; compiled in the slow
    test below)."""
    model, X, Y, inits, opts = moe_problem(4, 300, 3)
    monkeypatch.setattr(driver, "STARTS_SAMPLES", 2 * 2 * 300)
    groups = driver.replication_groups(4, 300, 600)  # two groups of two data sets
    together = driver._starts_together(model, X, Y, inits, opts, groups)
    for init, fit in zip(inits, together):
        alone = fit_batch(model, X, Y, init, opts, warn=False)
        assert torch.equal(fit.n_iter, alone.n_iter) and fit.status == alone.status
        assert torch.equal(fit.mean_loglik, alone.mean_loglik)
        assert all(torch.equal(fit.params[k], v) for k, v in alone.params.items())


def test_best_of_fits_starts_together_on_the_compiled_path_one_thread_alone(monkeypatch):
    """``fit_best_of`` fits its starts together on the compiled mixture path with one thread; eager fits,
    and on two threads starts side by side or one after another, are as before."""
    from softmoe_torch.estimation.driver import fit_best_of

    calls = []

    def together(model, X, Y, inits, options, groups):  # eager fits stand in for the compiled ones
        calls.append(len(inits))
        eager = dataclasses.replace(options, compile=False)
        return [fit_batch(model, X, Y, init, eager, warn=False) for init in inits]

    monkeypatch.setattr(driver, "_starts_together", together)
    model, X, Y, inits, opts = moe_problem(1, 200, 3)
    compiled = dataclasses.replace(opts, compile=True)
    best = fit_best_of(model, X, Y, inits, compiled)
    assert calls == [3] and best.converged.all()
    fit_best_of(model, X, Y, inits, opts)
    assert calls == [3]
    sides, eager_fits = [], [fit_batch(model, X, Y, init, opts, warn=False) for init in inits]
    monkeypatch.setattr(driver, "_side_by_side", lambda fit, items, workers: sides.append(workers) or eager_fits)
    on_two_threads(lambda: fit_best_of(model, X, Y, inits, compiled))
    assert calls == [3] and sides == [2]
    monkeypatch.setattr(driver, "COMPILED_CHUNK", 100)  # two threads, two groups: one start after another
    model, X, Y, inits, _ = moe_problem(2, 100, 3)
    monkeypatch.setattr(driver, "fit_batch", lambda *args, **kwargs: fit_batch(*args[:4], opts, warn=False))
    on_two_threads(lambda: fit_best_of(model, X, Y, inits, compiled))
    assert calls == [3] and sides == [2]


@pytest.mark.slow
def test_compiled_starts_fitted_together_equal_starts_fitted_one_after_another():
    """On the compiled path (its graphs take minutes to make from an empty cache) the same bit for bit:
    a compiled evaluation's rows do not depend on the rows beside them, nor (at this model's 8
    parameters) do the optimizer's solves."""
    model, X, Y, inits, opts = moe_problem(3, 400, 3, compile=True)
    groups = driver.replication_groups(3, 400, driver.group_samples(model, opts))
    together = driver._starts_together(model, X, Y, inits, opts, groups)
    for init, fit in zip(inits, together):
        alone = fit_batch(model, X, Y, init, opts, warn=False)
        assert torch.equal(fit.mean_loglik, alone.mean_loglik) and torch.equal(fit.n_iter, alone.n_iter)
        assert all(torch.equal(fit.params[k], v) for k, v in alone.params.items())


def test_a_failing_or_early_replication_does_not_change_the_others(compose_cfg):
    _, model, X, Y, init = problem(compose_cfg, "distinguishable", 1500, 3)
    opts = FitOptions()
    reference = fit_batch(model, X, Y, init, opts)
    Y_bad = Y.clone()
    Y_bad[0, 5] = float("nan")  # replication 0 cannot be evaluated
    early = {k: v.clone() for k, v in init.items()}
    for k in early:  # replication 2 starts at its own optimum, so it stops at once
        early[k][2] = reference.params[k][2]
    with pytest.warns(ConvergenceWarning):
        mixed = fit_batch(model, X, Y_bad, early, opts)
    assert mixed.status[0].startswith("failed")
    assert all(torch.isfinite(v[0]).all() for v in mixed.params.values())
    assert mixed.status[1] == "converged" and mixed.status[2] == "converged"
    assert int(mixed.n_iter[2]) <= 2
    assert float(mixed.mean_loglik[1]) == pytest.approx(float(reference.mean_loglik[1]), rel=1e-9)
    assert float(mixed.mean_loglik[2]) == pytest.approx(float(reference.mean_loglik[2]), rel=1e-9)


def test_every_method_reaches_the_same_optimum(compose_cfg):
    _, model, X, Y, init = problem(compose_cfg, "distinguishable", 5000, 2)
    fits = {
        m: fit_batch(model, X, Y, init, FitOptions.for_method(m, tol=1e-12 if m.startswith("em") else 1e-13))
        for m in ALL
    }
    fits["em_plain"] = fit_batch(model, X, Y, init, FitOptions.for_method("em", accelerate="none", tol=1e-12))
    fits["em_squarem"] = fit_batch(model, X, Y, init, FitOptions.for_method("em", accelerate="squarem", tol=1e-12))
    best = fits["newton"]
    assert best.solver == "newton" and int(best.n_iter.max()) < 20
    for m, res in fits.items():
        torch.testing.assert_close(res.mean_loglik, best.mean_loglik, rtol=1e-9, atol=0, msg=m)
        for k in res.params:
            torch.testing.assert_close(res.params[k], best.params[k], rtol=0, atol=2e-3, msg=f"{m} {k}")


@pytest.mark.parametrize("method", ALL)
def test_max_iter_status_warns_with_advice(compose_cfg, method):
    _, model, X, Y, init = problem(compose_cfg, "nondistinguishable_eta", 500, 1, scale=0.3)
    with pytest.warns(ConvergenceWarning, match="raise fit.max_iter"):
        res = fit_batch(model, X, Y, init, FitOptions.for_method(method, max_iter=1))
    assert res.status == ["max_iter"] and not bool(res.converged[0]) and int(res.n_iter[0]) == 1


@pytest.mark.parametrize("method", ALL)
def test_converged_status_meets_the_contract(compose_cfg, method):
    _, model, X, Y, init = problem(compose_cfg, "nondistinguishable_eta", 800, 2)
    opts = FitOptions.for_method(method)
    res = fit_batch(model, X, Y, init, opts)
    assert res.status == ["converged", "converged"]
    for (
        trace
    ) in res.trace:  # the last iteration changed the mean log-likelihood by less than tol (or the gradient was tiny)
        assert abs(trace[-1] - trace[-2]) < opts.tol or method.startswith("em") is False


def test_failed_status_rolls_back_to_finite_values(compose_cfg):
    _, model, X, Y, init = problem(compose_cfg, "distinguishable", 300, 1)
    Y = Y.clone()
    Y[0, 0] = float("inf")
    for method in ALL:
        with pytest.warns(ConvergenceWarning):
            res = fit_batch(model, X, Y, init, FitOptions.for_method(method))
        assert res.status[0].startswith("failed: non-finite"), method
        assert all(bool(torch.isfinite(v).all()) for v in res.params.values())


def test_stalled_status_when_no_step_raises_the_likelihood(compose_cfg, monkeypatch):
    """A gradient that points the wrong way (simulated): the line search finds no decrease while a
    large gain is predicted, so the fit says 'stalled', not 'converged'."""

    class Flipped:
        def __init__(self, objective):
            self.objective, self.exact_hessian = objective, False

        def evaluate(self, u, idx, order=1, resp=None):
            ev = self.objective.evaluate(u, idx, order, resp)
            return ev._replace(grad=None if ev.grad is None else -ev.grad)

    real = driver.make_objective
    monkeypatch.setattr(driver, "make_objective", lambda *args: Flipped(real(*args)))
    _, model, X, Y, init = problem(compose_cfg, "distinguishable", 500, 1, scale=0.3)
    with pytest.warns(ConvergenceWarning, match="stalled"):
        res = fit_batch(model, X, Y, init, FitOptions.for_method("direct"))
    assert res.status == ["stalled"]


def test_em_refuses_a_step_that_lowers_the_likelihood(compose_cfg, monkeypatch):
    """An M-step that makes things worse (simulated) is undone and reported as stalled."""

    _, model, X, Y, init = problem(compose_cfg, "distinguishable", 500, 1)
    monkeypatch.setattr(driver, "_mstep", lambda obj, u, idx, resp, opts, memory=None: u + 0.05)
    with pytest.warns(ConvergenceWarning, match="would lower the mean log-likelihood"):
        res = fit_batch(model, X, Y, init, FitOptions(accelerate="none"))
    assert res.status[0].startswith("stalled: EM iteration 1 would lower") and len(res.trace[0]) == 1


@pytest.mark.parametrize("rule", ["loglik", "loglik_rel", "params"])
def test_stopping_rules(compose_cfg, rule):
    _, model, X, Y, init = problem(compose_cfg, "nondistinguishable_eta", 1000, 1)
    loose = fit_batch(model, X, Y, init, FitOptions(rule=rule, tol=1e-3, gtol=0.0))
    tight = fit_batch(model, X, Y, init, FitOptions(rule=rule, tol=1e-9, gtol=0.0))
    assert loose.status == tight.status == ["converged"]
    assert int(loose.n_iter[0]) < int(tight.n_iter[0])
    assert float(tight.mean_loglik[0]) >= float(loose.mean_loglik[0])


def test_contract_rule_arithmetic():
    c = Contract(tol=1e-6, rule="params", gtol=1e-9)
    theta0, theta1 = torch.zeros(2, 3), torch.tensor([[0, 5e-7, 0], [0, 2e-6, 0]], dtype=torch.float32)
    g = torch.full((2, 3), 1.0)
    assert c.met(torch.zeros(2), torch.ones(2), theta0, theta1, g).tolist() == [True, False]
    rel = Contract(tol=1e-6, rule="loglik_rel")
    assert rel.met(torch.tensor([1000.0]), torch.tensor([1000.0005]), theta0[:1], theta0[:1], g[:1]).tolist() == [True]


def test_bounds_keep_estimates_inside(compose_cfg):
    _, model, X, Y, init = problem(compose_cfg, "nondistinguishable_eta", 300, 2, scale=0.3)
    bounds = {"real": 2.0, "positive": [1e-4, 1e-2], "gate": {"beta": 1.0, "tau": 1.5}}
    init["gate.tau"] = init["gate.tau"].clamp(-1.4, 1.4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_batch(model, X, Y, init, FitOptions(method="newton", bounds=bounds, max_iter=300))
    assert float(res.params["gate.tau"].abs().max()) <= 1.5
    assert float(res.params["gate.beta"].abs().max()) <= 1.0
    assert float(res.params["prompts.0.expert.eta"].abs().max()) <= 2.0
    assert float(res.params["prompts.0.nu"].min()) >= 1e-4


def test_method_defaults_match_the_configs(compose_cfg):
    for method, defaults in METHOD_DEFAULTS.items():
        cfg = compose_cfg([f"fit={method}"]).fit
        for key, value in defaults.items():
            if key == "inner":
                assert all(cfg.inner[k] == v for k, v in value.items()), method
            else:
                assert cfg[key] == value, (method, key)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="fit.method"):
        FitOptions(method="adam")
    with pytest.raises(ValueError, match="fit.mstep"):
        FitOptions(mstep="adam")
    with pytest.raises(ValueError, match="fit.accelerate"):
        FitOptions(accelerate="aitken")
    with pytest.raises(ValueError, match="fit.anderson_depth"):
        FitOptions(anderson_depth=0)
    with pytest.raises(ValueError, match="fit.rule"):
        FitOptions(rule="gradient")
    with pytest.raises(ValueError, match="fit.tol"):
        FitOptions(tol=0)


def test_valuing_trials_first_changes_no_iterate_and_saves_hessians(monkeypatch):
    """Rosenbrock's function from three starts by Newton on |H|: with trial steps valued first
    (derivatives only where a trial is accepted) the iterates, values and statuses are the same as
    with every trial differentiated, and fewer Hessians are computed."""
    from softmoe_torch.estimation import optim
    from softmoe_torch.estimation.evaluation import Evaluation

    def rosenbrock(u, idx, order):
        x, y = u[:, 0], u[:, 1]
        loss = (1 - x) ** 2 + 100 * (y - x**2) ** 2
        orders.extend([order] * len(idx))  # one entry per problem evaluated
        if order == 0:
            return Evaluation(loss)
        grad = torch.stack([-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)], 1)
        hess = torch.stack(
            [torch.stack([2 - 400 * (y - 3 * x**2), -400 * x], 1), torch.stack([-400 * x, 200 + 0 * x], 1)],
            1,
        )
        return Evaluation(loss, grad, hess if order == 2 else None)

    u0 = torch.tensor([[-1.2, 1.0], [2.0, -1.0], [0.5, 3.0]], dtype=torch.float64)
    opts = optim.SolverOptions(max_iter=200)
    done = lambda f_old, f_new, u_old, u_new, g: (f_old - f_new).abs() < 1e-14  # noqa: E731
    stationary = lambda g: g.abs().amax(1) < 1e-9  # noqa: E731
    runs, real_try = {}, optim._try
    for value_first in (True, False):
        if not value_first:  # every trial differentiated at once
            monkeypatch.setattr(optim, "_try", lambda *args: real_try(*args[:-1], False))
        orders = []
        runs[value_first] = optim.minimize(rosenbrock, u0, "newton_eigen", opts, done, stationary), orders
    (first, orders_first), (every, orders_every) = runs[True], runs[False]
    assert torch.equal(first[0], every[0]) and torch.equal(first[1], every[1]) and torch.equal(first[3], every[3])
    assert first[4] == every[4] == ["converged"] * 3 and torch.allclose(first[0], torch.ones_like(u0))
    assert 0 in orders_first and 0 not in orders_every
    assert orders_first.count(2) < orders_every.count(2)


@pytest.mark.parametrize("strategy", ["newton", "newton_eigen", "bfgs"])
def test_a_problems_iterates_do_not_depend_on_the_problems_beside_it(strategy):
    """Eight problems of 13 parameters (an odd number, as K = 3's 13: there MKL's batched solves and
    products round a row by where it sits in the batch, unless bordered to an even size) minimized in one
    batch and each alone: the same iterates bit for bit. The objective is indefinite away from its minima,
    so Newton on |H| takes eigenvalue steps too."""
    from softmoe_torch.estimation import optim
    from softmoe_torch.estimation.evaluation import Evaluation

    R, p = 8, 13
    gen = torch.Generator().manual_seed(3)
    A = torch.randn(R, p, p, generator=gen, dtype=torch.float64) / p**0.5
    u0 = torch.randn(R, p, generator=gen, dtype=torch.float64)

    def fun(u, idx, order):
        a = A[idx]
        z = (a @ u.unsqueeze(-1)).squeeze(-1)
        loss = ((z**2 - 1) ** 2).sum(1) / 4 + 0.005 * (u**2).sum(1)
        if order == 0:
            return Evaluation(loss)
        grad = (a.transpose(1, 2) @ ((z**2 - 1) * z).unsqueeze(-1)).squeeze(-1) + 0.01 * u
        hess = a.transpose(1, 2) @ ((3 * z**2 - 1).unsqueeze(-1) * a) + 0.01 * torch.eye(p, dtype=u.dtype)
        return Evaluation(loss, grad, hess if order == 2 else None)

    opts = optim.SolverOptions(max_iter=100)
    done = lambda f_old, f_new, u_old, u_new, g: (f_old - f_new).abs() < 1e-15  # noqa: E731
    stationary = lambda g: g.abs().amax(1) < 1e-10  # noqa: E731
    together = optim.minimize(fun, u0, strategy, opts, done, stationary)
    assert together[4].count("converged") >= R // 2
    for r in range(R):
        alone = optim.minimize(
            lambda u, idx, order: fun(u, idx + r, order), u0[r : r + 1], strategy, opts, done, stationary
        )
        assert torch.equal(alone[0][0], together[0][r]) and int(alone[3][0]) == int(together[3][r]), r
