"""The bootstrap likelihood-ratio tests: the p-value formula and its counting rules, batched
refits equal single refits, failure accounting, degenerate fits flagged, bad inputs, the CLI."""

import copy
import json
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import run_cli

from softmoe_torch import (
    AffineExpert,
    Component,
    ContaminatedMoE,
    Estimator,
    Gaussian,
    Laplace,
    SoftmaxGate,
    TanhExpert,
)
from softmoe_torch.estimation.degeneracy import degeneracy, trainable_sizes
from softmoe_torch.lrt import BootstrapTest, contamination_test, prompts_test, with_variance_floor

D = 3


def model(n_prompts: int = 1, tau: float = 1.0) -> ContaminatedMoE:
    e1 = torch.eye(D, dtype=torch.float64)[0]
    prompts = [Component(TanhExpert(D, eta=-e1), Gaussian(), nu=0.01) for _ in range(n_prompts)]
    return ContaminatedMoE(
        Component(TanhExpert(D, eta=e1), Laplace(), nu=0.01, frozen=True),
        prompts,
        SoftmaxGate(D, n_prompts=n_prompts, tau=[tau] * n_prompts),
    ).double()


def data(n: int, contaminated: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, D, generator=g, dtype=torch.float64)
    m = model()
    if contaminated:
        return X, m.sample(X, generator=g)
    f0 = m.pretrained
    return X, f0.density.sample(f0.mean(X), f0.nu.expand(n), g)


def made(raw_statistic, raw_boot, status=None, rule="conservative", iterations=None):
    class Observed:  # what the formula reads of the observed fit
        n, status, degenerate = 10, ["converged"], [[]]

    status = status or ["converged"] * len(raw_boot)
    return BootstrapTest(
        "contamination",
        raw_statistic,
        raw_boot,
        status,
        [False] * len(raw_boot),
        Observed(),
        rule,
        0.0,
        iterations=iterations,
    )


def test_pvalue_is_one_plus_the_count_at_or_above_over_b_plus_one():
    boot = [0.5, 1.0, 2.0, 3.0, 4.0] * 4  # B = 20
    assert made(2.0, boot).pvalue == (1 + 12) / 21  # ties count
    assert made(10.0, boot).pvalue == 1 / 21
    assert made(-1.0, boot).pvalue == 1.0  # LR clamped at 0; every LR* >= 0


def test_negative_statistics_are_clamped_and_counted():
    test = made(-0.3, [-0.1, 0.2] * 10)
    assert test.statistic == 0.0 and test.boot.min() == 0.0
    counts = test.counts()
    assert counts["n_negative"] == 10 and counts["observed_negative"]


def test_unconverged_refits_count_high_under_the_conservative_rule_and_as_fitted_otherwise():
    boot = [1.0] * 20
    status = ["max_iter"] * 3 + ["stalled"] * 2 + ["converged"] * 15
    assert made(5.0, boot, status).pvalue == (1 + 5) / 21 and made(5.0, boot, status).n_failed == 5
    assert made(5.0, boot, status, rule="as_fitted").pvalue == 1 / 21
    with_nan = made(5.0, [math.nan] + boot[1:], rule="as_fitted")  # a non-finite statistic always counts high
    assert with_nan.n_failed == 1 and with_nan.pvalue == 2 / 21


def test_a_capped_statistic_is_compared_raw_and_stopping_at_the_cap_is_no_failure():
    """The EM-test form: raw statistics (not clamped at 0), and max_iter is the procedure."""
    boot = [-3.0, -2.0, -1.0, 0.5] * 5  # B = 20
    status = ["max_iter"] * 9 + ["stalled"] + ["converged"] * 10  # the stalled refit's LR* is -2
    capped = made(-1.5, boot, status, iterations=10)
    assert capped.statistic == -1.5 and capped.boot.min() == -3.0
    assert capped.n_failed == 1  # the stalled refit, under the conservative rule
    assert capped.pvalue == (1 + 10 + 1) / 21  # the ten -1 and 0.5 at or above, and the stalled one
    assert made(-1.5, boot, status).pvalue == 1.0  # the same numbers as an MLE's: clamped, every LR* ties at 0


@pytest.fixture(scope="module")
def estimator():
    return Estimator(model(), "newton", n_init=2, max_iter=200)


def test_batched_refits_equal_single_refits(estimator, one_thread):
    X, y = data(200, contaminated=False)
    Ystar = torch.stack([data(200, False, seed=s)[1] for s in (1, 2, 3)])
    batch = estimator.fit(X.expand(3, *X.shape), Ystar, replications=[0, 0, 0])
    for b in range(3):
        alone = estimator.fit(X, Ystar[b], replications=[0])
        assert float(alone.loglik[0]) == pytest.approx(float(batch.loglik[b]), rel=1e-9, abs=1e-7)
        assert alone.status[0] == batch.status[b]


def test_the_refits_are_the_observed_procedure_on_each_draw(estimator, one_thread):
    """LR*_b recomputed by fitting draw b alone, as the observed data were fitted."""
    X, y = data(150, contaminated=False)
    f0 = estimator.spec.pretrained
    from softmoe_torch.lrt import null_draw

    for iterations in (None, 10):  # the MLE, and the default: the alternative capped at 10 iterations
        test = contamination_test(estimator, X, y, B=19, seed=4, progress=False, iterations=iterations, starts="policy")
        procedure = estimator if iterations is None else Estimator(model(), "newton", n_init=2, max_iter=iterations)
        for b in (0, 18):
            yb = null_draw(f0, X, 4, b)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a capped fit stops at its cap
                fit = procedure.fit(X, yb, replications=[0])
            lr = 2 * (float(fit.loglik[0]) - float(f0(X, yb).sum()))
            assert test.raw_boot[b] == pytest.approx(lr, rel=1e-8, abs=1e-6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            again = procedure.fit(X, y, replications=[0])
        assert test.raw_statistic == pytest.approx(2 * (float(again.loglik[0]) - float(f0(X, y).sum())), rel=1e-9)
        assert test.iterations == iterations and test.to_dict()["iterations"] == iterations
    assert max(test.observed.n_iter.tolist()) <= 10


def test_failure_accounting_when_no_refit_can_converge(one_thread):
    X, y = data(150, contaminated=True)
    rushed = Estimator(model(), "newton", n_init=1, max_iter=2)
    test = contamination_test(rushed, X, y, B=19, progress=False, iterations=None)
    assert test.counts()["statuses"] == {"max_iter": 19}
    assert test.n_failed == 19 and test.pvalue == 1.0
    as_fitted = contamination_test(rushed, X, y, B=19, unconverged="as_fitted", progress=False, iterations=None)
    assert as_fitted.n_failed == 0 and as_fitted.raw_boot == test.raw_boot
    capped = contamination_test(rushed, X, y, B=19, progress=False, iterations=2)  # the cap is the procedure
    assert capped.n_failed == 0 and capped.raw_boot == test.raw_boot


def test_clear_contamination_is_detected_and_its_absence_is_not(estimator, one_thread):
    """Every refit below the observed LR: p = 1/20 (for the MLE as fitted, plus one per
    unconverged refit under the conservative rule)."""
    X, y = data(400, contaminated=True)
    capped = contamination_test(estimator, X, y, B=19, progress=False)
    assert capped.pvalue == 1 / 20 and max(capped.raw_boot) < capped.statistic / 10
    test = contamination_test(estimator, X, y, B=19, unconverged="as_fitted", progress=False, iterations=None)
    assert test.pvalue == 1 / 20 and max(test.raw_boot) < test.statistic / 10
    unconverged = sum(s != "converged" for s in test.boot_status)
    test.rule = "conservative"
    assert test.pvalue == (1 + unconverged) / 20
    X, y = data(400, contaminated=False, seed=11)
    assert contamination_test(estimator, X, y, B=19, progress=False).pvalue > 0.05


def test_prompts_test_refits_both_models(one_thread):
    X, y = data(200, contaminated=True)
    null, alternative = (Estimator(model(K), "newton", n_init=1, max_iter=100) for K in (1, 2))
    test = prompts_test(null, alternative, X, y, B=19, progress=False)
    assert test.test == "prompts 1 vs 2" and test.B == 19 and test.observed_null is not None
    assert 1 / 20 <= test.pvalue <= 1.0
    assert len(test.boot_status) == 19 and len(test.to_dict()["boot"]) == 19


def test_the_variance_floor_bounds_every_prompt_relative_to_the_pretrained_variance():
    floored = with_variance_floor(Estimator(model(2), "newton"), 0.1)
    nu0 = float(floored.spec.pretrained.nu)
    assert floored.options.bounds["prompts.0.nu"] == floored.options.bounds["prompts.1.nu"] == [0.1 * nu0, 100.0]
    X, y = data(200, contaminated=False, seed=5)
    res = floored.fit(X, y)
    assert float(res["prompts.0.nu"].min()) >= 0.1 * nu0 * (1 - 1e-12)


def test_a_spike_is_flagged_and_a_healthy_fit_is_not():
    X, _ = data(500, contaminated=True)
    healthy = model()
    sizes = trainable_sizes(healthy)
    assert sizes == {1: D + 1}
    assert degeneracy(healthy, [], X, sizes) == []
    closed = model(tau=-12.0)  # the gate opens on almost nothing
    assert "gate opens on about" in " ".join(degeneracy(closed, [], X, sizes))
    with torch.no_grad():
        healthy.prompts[0].nu.fill_(1e-6)
    assert "variance 1e-06 is on its lower bound" in " ".join(degeneracy(healthy, ["prompts.0.nu"], X, sizes))


BAD = {
    "B too small for 0.05": (lambda e, X, y: contamination_test(e, X, y, B=10), "B must be an integer of at least 19"),
    "B not an integer": (lambda e, X, y: contamination_test(e, X, y, B=99.0), "B must be an integer"),
    "an unknown rule": (
        lambda e, X, y: contamination_test(e, X, y, B=19, unconverged="drop"),
        "unconverged must be one of conservative, as_fitted",
    ),
    "a cap of no iterations": (
        lambda e, X, y: contamination_test(e, X, y, B=19, iterations=0),
        "iterations must be a positive integer",
    ),
    "alternative not larger": (lambda e, X, y: prompts_test(e, e, X, y, B=19), "must have more prompts than the null"),
    "floor ratio of 1 or more": (lambda e, X, y: with_variance_floor(e, 1.5), "a number in (0, 1)"),
    "floor without an upper bound": (
        lambda e, X, y: with_variance_floor(Estimator(model(), "newton", bounds={"positive": None}), 0.1),
        "give fit.bounds.positive [lo, hi], or no floor",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line(case, estimator):
    call, message = BAD[case]
    X, y = data(50, contaminated=False)
    with pytest.raises(ValueError) as info:
        call(estimator, X, y)
    assert message in str(info.value) and "\n" not in str(info.value)


def _csv(path, n, contaminated, seed=0):
    """A d = 8 data file drawn as the distinguishable setting (Laplace f0, nu0 = 0.001)."""
    g = np.random.default_rng(seed)
    X = g.standard_normal((n, 8))
    y = np.tanh(X[:, 0]) + g.laplace(0, math.sqrt(0.001 / 2), n)
    if contaminated:
        w = 1 / (1 + np.exp(-(X.sum(1) / math.sqrt(8) + 1.0)))
        y = np.where(g.random(n) < w, np.tanh(-X[:, 0]) + g.normal(0, math.sqrt(0.001), n), y)
    np.savetxt(
        path,
        np.column_stack([X, y]),
        delimiter=",",
        header=",".join([f"x{i}" for i in range(1, 9)] + ["y"]),
        comments="",
    )
    return path


FAST = ["test.B=19", "init.n_init=1", "fit.max_iter=60", "progress=false"]


def test_cli_writes_the_result_and_the_histogram(tmp_path):
    data_file = _csv(tmp_path / "d.csv", 300, contaminated=True)
    out = tmp_path / "res" / "t.json"
    proc = run_cli(
        "softmoe_torch.bootstrap_test",
        f"data={data_file}",
        "setting=distinguishable",
        *FAST,
        "test.unconverged=as_fitted",
        f"out={out}",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert {"statistic", "pvalue", "B", "n_failed", "seconds"} <= set(result)
    assert result["B"] == 19 and len(result["boot"]) == 19 and result["pvalue"] == 1 / 20
    assert out.with_suffix(".png").stat().st_size > 0
    assert "p-value = 0.0500" in proc.stdout


def test_cli_prompts_test(tmp_path):
    data_file = _csv(tmp_path / "d.csv", 200, contaminated=True)
    out = tmp_path / "p.json"
    proc = run_cli(
        "softmoe_torch.bootstrap_test",
        f"data={data_file}",
        "setting=distinguishable",
        "test=prompts",
        *FAST,
        f"out={out}",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["test"] == "prompts 1 vs 2"


@pytest.mark.parametrize(
    "args, message",
    [
        (["test.B=10"], "B must be an integer of at least 19"),
        (["test=prompts", "test.extra=0"], "test.extra must be at least 1"),
        (["test.unconverged=drop"], "unconverged must be one of"),
        (["test.variance_floor=2"], "variance floor ratio must be a number in (0, 1)"),
        (["init=near_truth"], "use init=random"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    data_file = _csv(tmp_path / "d.csv", 60, contaminated=False)
    proc = run_cli(
        "softmoe_torch.bootstrap_test",
        f"data={data_file}",
        "setting=distinguishable",
        "progress=false",
        *args,
        f"out={tmp_path / 'x.json'}",
    )
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_clone_changes_only_what_it_is_given():
    """Estimator.clone: the lrt's capped and floored procedures are the observed one with one change."""
    from softmoe_torch import Estimator

    est = Estimator(model(), "newton", n_init=3, seed=7, tol=1e-10)
    capped = est.clone(max_iter=10)
    assert (capped.method, capped.n_init, capped.seed, capped.options.tol, capped.options.max_iter) == (
        "newton",
        3,
        7,
        1e-10,
        10,
    )
    assert est.options.max_iter == 2000  # the original is untouched
    em = est.clone(method="em", n_init=1)
    assert em.options.method == "em" and em.options.tol == 1e-8 and em.n_init == 1 and em.seed == 7


def test_the_statistic_of_many_data_sets_is_the_tests_own(estimator, one_thread):
    """contamination_statistics (what the size and power studies call) gives, on the observed data
    and on the bootstrap draws, both parts contamination_test computes, and pooled_pvalues on them
    gives the test's p-value."""
    from softmoe_torch.lrt import contamination_statistics, null_draw, pooled_pvalues

    X, y = data(150, contaminated=True)
    test = contamination_test(estimator, X, y, B=19, seed=3, progress=False)
    draws = torch.stack([y, *(null_draw(estimator.spec.pretrained, X, 3, b) for b in range(19))])
    stats = contamination_statistics(estimator, X.expand(20, *X.shape), draws)
    assert stats.shape == (20, 2) and stats.dtype == torch.float64
    assert stats[0].tolist() == pytest.approx([test.raw_statistic, test.raw_broad], rel=1e-8, abs=1e-6)
    assert stats[1:, 0].tolist() == pytest.approx(test.raw_boot, rel=1e-8, abs=1e-6)
    assert stats[1:, 1].tolist() == pytest.approx(test.boot_broad, rel=1e-12, abs=1e-9)
    assert test.n_failed == 0 and pooled_pvalues(stats[:1], stats[1:])[0] == pytest.approx(test.pvalue, abs=1e-12)
    alone = contamination_statistics(estimator, X, y)
    assert alone[0].tolist() == pytest.approx([test.raw_statistic, test.raw_broad], rel=1e-12)
    fitted_only = contamination_statistics(estimator, X, y, broad=None)
    assert fitted_only.shape == (1, 1) and fitted_only.item() == pytest.approx(test.raw_statistic, rel=1e-12)
    uncapped = contamination_statistics(estimator, X, y, iterations=None, broad=None).item()
    assert uncapped >= test.raw_statistic - 1e-6  # the MLE's statistic: a different number, named by its option


def test_anchored_starts_sit_at_the_null():
    from softmoe_torch.lrt import anchored_starts

    m = model(n_prompts=2)
    starts = anchored_starts(m)
    assert [float(s["gate.tau"][0]) for s in starts] == [-2.0, 0.0, 2.0]
    for s in starts:
        assert set(s) == set(m.trainable_parameters())
        for k in (0, 1):
            assert torch.equal(s[f"prompts.{k}.expert.eta"], m.pretrained.expert.eta)  # f0's e1, not the prompt's -e1
            assert float(s[f"prompts.{k}.nu"]) == float(m.pretrained.nu)
        assert not s["gate.beta"].any() and s["gate.tau"].shape == (2,)
    other = ContaminatedMoE(
        Component(TanhExpert(D), Laplace(), nu=0.01, frozen=True),
        Component(AffineExpert(D), Gaussian(), nu=0.01),
        SoftmaxGate(D),
    )
    with pytest.raises(ValueError, match="anchored starts put each prompt's expert at the pre-trained expert's"):
        anchored_starts(other)


def test_the_anchored_statistic_is_the_best_of_its_starts_and_the_tests_own(estimator, one_thread):
    """starts='anchored': the observed statistic is that of the best of the three anchored fits (each
    capped), and contamination_statistics computes the same by the same path."""
    from softmoe_torch.lrt import anchored_starts, contamination_statistics

    X, y = data(200, contaminated=True)
    test = contamination_test(estimator, X, y, B=19, seed=1, progress=False, starts="anchored")
    assert test.starts == "anchored" and test.to_dict()["starts"] == "anchored"
    capped = estimator.clone(max_iter=10)
    f0 = estimator.spec.pretrained
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best = max(
            float(capped.fit(X, y, start=s, replications=[0]).loglik[0]) for s in anchored_starts(estimator.spec)
        )
    assert test.raw_statistic == pytest.approx(2 * (best - float(f0(X, y).sum())), rel=1e-9)
    again = contamination_statistics(estimator, X, y, starts="anchored", broad=None).item()
    assert again == pytest.approx(test.raw_statistic, rel=1e-12)
    with pytest.raises(ValueError, match="starts must be one of policy, anchored"):
        contamination_statistics(estimator, X, y, starts="null")


def test_broad_statistic_by_hand():
    """Two observations at h0(x) = 0 under f0 = N(0, 1), one ratio k = 10: r_i = N(y_i; 0, 10) / N(y_i; 0, 1)
    = exp(y_i^2 (1 - 1/k) / 2) / sqrt(k); with s_i = r_i - 1 the weight's stationary point is
    eps = -(s_1 + s_2) / (2 s_1 s_2), and the statistic 2 sum_i log(1 + eps s_i)."""
    from softmoe_torch.lrt import broad_statistics

    f0 = Component(TanhExpert(D), Gaussian(), nu=1.0, frozen=True).double()
    X = torch.zeros(1, 2, D, dtype=torch.float64)
    y = torch.tensor([[0.0, 3.0]], dtype=torch.float64)
    s = np.exp(y[0].numpy() ** 2 * 0.45) / np.sqrt(10) - 1  # -0.6838, 17.15
    eps = -(s[0] + s[1]) / (2 * s[0] * s[1])
    assert 0 < eps < 1
    expected = 2 * np.log1p(eps * s).sum()
    assert broad_statistics(f0, X, y, ratios=[10]).item() == pytest.approx(expected, rel=1e-10)
    # more ratios: the largest of each one's maximum
    k100 = broad_statistics(f0, X, y, ratios=[100]).item()
    assert broad_statistics(f0, X, y, ratios=[10, 100]).item() == pytest.approx(max(expected, k100), rel=1e-12)
    # no observation far out: the derivative at eps = 0 is negative, the statistic 0
    assert broad_statistics(f0, X, torch.tensor([[0.0, 0.5]], dtype=torch.float64), ratios=[10]).item() == 0.0


def test_broad_statistic_matches_a_scalar_search_and_survives_far_observations():
    from scipy.optimize import minimize_scalar

    from softmoe_torch.lrt import broad_statistics

    f0 = Component(TanhExpert(D, eta=torch.ones(D)), Laplace(), nu=0.01, frozen=True).double()
    X, y = data(300, contaminated=True, seed=2)
    y = y.clone()
    y[:3] += torch.tensor([5.0, -40.0, 900.0], dtype=torch.float64)  # r = inf in float64 for the last
    value = broad_statistics(f0, X[None], y[None], ratios=[10, 1000]).item()
    with torch.no_grad():
        mean = f0.mean(X)
        log0 = f0.density.log_prob(y, mean, f0.nu.expand(300))
    best = 0.0
    for k in (10, 1000):
        with torch.no_grad():
            log_r = (f0.density.log_prob(y, mean, (k * f0.nu).expand(300)) - log0).numpy()
        loss = lambda e: -np.logaddexp(np.log1p(-e), np.log(e) + log_r).sum()  # noqa: E731
        found = minimize_scalar(loss, bounds=(1e-12, 1 - 1e-9), method="bounded", options={"xatol": 1e-12})
        best = max(best, -2 * found.fun)
    assert np.isfinite(value) and value > 0 and value == pytest.approx(best, rel=1e-7)
    with pytest.raises(ValueError, match="numbers > 1"):
        broad_statistics(f0, X[None], y[None], ratios=[1.0])


def test_pooled_pvalues_by_hand_and_for_one_part():
    from softmoe_torch.lrt import pooled_pvalues

    # pooled with the observed row, at-or-above counts (size 4): part 1: obs 2, draws 4, 3, 1;
    # part 2: obs 2, draws 4, 1, 3; min-p counts: obs 2, draws 4, 1, 1: three of four at or below 2
    pool = [[1.0, 0.0], [2.0, 5.0], [3.0, 1.0]]
    assert pooled_pvalues([[2.5, 4.0]], pool).tolist() == [0.75]
    assert pooled_pvalues([[9.0, 9.0]], pool).tolist() == [0.25]
    rng = np.random.default_rng(1)
    ref, obs = rng.normal(size=40), rng.normal(size=9)
    plain = [(1 + (ref >= t).sum()) / 41 for t in obs]  # one part: the usual bootstrap p-value
    assert pooled_pvalues(obs, ref).tolist() == pytest.approx(plain, abs=1e-15)
    # +inf is the most extreme value of its part; the draw (2, 5) is the largest of part 2 and ties
    assert pooled_pvalues([[np.inf, 0.0]], pool).tolist() == [0.5]
    # a tie in the smallest count is broken by the next: (3.5, 2) counts (1, 2), the draw (2, 5)
    # counts (3, 1) -> sorted (1, 3): less extreme, so p = 1/4 (without the tie-break 2/4)
    assert pooled_pvalues([[3.5, 2.0]], pool).tolist() == [0.25]
    with pytest.raises(ValueError, match="must not be nan"):
        pooled_pvalues([[np.nan, 1.0]], pool)


def test_min_p_keeps_the_level_on_exchangeable_rows():
    """Rows drawn alike (the observed one and B draws): P(p <= 0.05) close to 0.05 and not above it
    beyond chance, with a part that is 0 half the time (as the broad part is under H0), at B = 19
    (where min-p without the tie-break rejects about 1% of the time) and at B = 99."""
    from softmoe_torch.lrt import pooled_pvalues

    rng = np.random.default_rng(2)
    for B in (19, 99):
        hits = []
        for _ in range(2000):
            rows = rng.normal(size=(B + 1, 2))
            rows[:, 1] = np.maximum(rows[:, 1], 0.0) + 0.3 * rows[:, 0]
            hits.append(pooled_pvalues(rows[:1], rows[1:])[0] <= 0.05)
        rate = np.mean(hits)
        assert 0.035 < rate <= 0.05 + 2.6 * np.sqrt(0.05 * 0.95 / 2000), (B, rate)


def test_split_starts_sit_exactly_at_each_fitted_null(one_thread):
    """Every split start (each null component a, each share pi) gives the alternative (one more prompt)
    the fitted null's log-likelihood on every data set, and the new prompt's gate weight is pi times a's."""
    from softmoe_torch.estimation.inference import load_params
    from softmoe_torch.lrt.starts import SPLITS, split_starts

    def gaussian(n_prompts):  # the prompts' family is f0's, so a copy of f0 is f0
        e1 = torch.eye(D, dtype=torch.float64)[0]
        return ContaminatedMoE(
            Component(TanhExpert(D, eta=e1), Gaussian(), nu=0.01, frozen=True),
            [Component(TanhExpert(D, eta=-e1), Gaussian(), nu=0.01) for _ in range(n_prompts)],
            SoftmaxGate(D, n_prompts=n_prompts, tau=[1.0] * n_prompts),
        ).double()

    Xs = torch.randn(2, 300, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    Y = torch.stack([gaussian(1).sample(x, generator=torch.Generator().manual_seed(r)) for r, x in enumerate(Xs)])
    null = Estimator(gaussian(1), "newton", n_init=2).fit(Xs, Y)
    alternative = gaussian(2)
    starts = split_starts(null.params, alternative)
    assert len(starts) == 2 * len(SPLITS)  # the pre-trained component and the one prompt, 3 shares each
    for k, start in enumerate(starts):
        for r in range(2):
            fitted = null.model(r)
            moved = load_params(copy.deepcopy(alternative), start, r)
            with torch.no_grad():
                assert float(moved(Xs[r], Y[r]).sum()) == pytest.approx(float(fitted(Xs[r], Y[r]).sum()), rel=1e-12)
                a, pi = divmod(k, len(SPLITS))
                w_null, w_alt = fitted.gate_probs(Xs[r]), moved.gate_probs(Xs[r])
                assert torch.allclose(w_alt[:, 2], SPLITS[pi] * w_null[:, a], rtol=1e-10, atol=1e-14)


def test_the_prompts_test_from_split_starts_never_starts_below_its_null(one_thread):
    X, y = data(300, contaminated=True)
    null, alternative = Estimator(model(), "newton", n_init=2), Estimator(model(n_prompts=2), "newton", n_init=2)
    test = prompts_test(null, alternative, X, y, B=19, seed=0, progress=False, starts="anchored")
    assert test.starts == "anchored" and test.raw_statistic >= -1e-6 and min(test.raw_boot) >= -1e-6
    with pytest.raises(ValueError, match="one more prompt"):
        prompts_test(null, Estimator(model(n_prompts=3), "newton"), X, y, B=19, progress=False, starts="anchored")
