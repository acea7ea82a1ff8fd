"""The metrics unit: hand-computed cases of its statistics, and the old import paths of the moved
modules (kept for one release) giving the same objects with a DeprecationWarning."""

import importlib
import sys

import numpy as np
import pytest

from softmoe_torch.metrics import intervals, rates


def test_wilson_interval_of_five_in_ten_by_hand():
    # p = 1/2, z = 1.96: centre (0.5 + z^2/20) / (1 + z^2/10), half z sqrt(1/40 + z^2/400) / (1 + z^2/10)
    lo, hi = intervals.wilson(5, 10)
    assert lo == pytest.approx(0.23659, abs=1e-5) and hi == pytest.approx(0.76341, abs=1e-5)
    assert intervals.wilson(0, 20)[0] == 0.0 and intervals.wilson(20, 20)[1] == pytest.approx(1.0)


def test_window_slope_takes_the_sizes_in_its_window_only():
    sizes = np.array([1000, 2000, 4000, 8000, 16000])
    errors = np.outer(sizes**-0.5, np.ones(4))  # an exact power law inside the window ...
    errors[0] = 1.0  # ... and an outlier outside it
    out = rates.window_slope(sizes, errors, lo=2000)
    assert out["slope"] == pytest.approx(-0.5) and out["sizes"] == 4
    assert out["ci_low"] == pytest.approx(-0.5) and out["ci_high"] == pytest.approx(-0.5)
    assert rates.window_slope(sizes, errors, lo=8000) is None  # two sizes: fewer than min_sizes = 3
    assert rates.window_slope(sizes, np.full((5, 4), np.nan)) is None


def test_the_slope_of_the_median_ignores_an_outlying_replication():
    """At n = 1e2 and 1e4 two replications follow n^-1/2 and one sits at 1000: the median is
    n^-1/2 (slope -0.5, every bootstrap draw with two or more regular ones agrees), the mean is
    about 333.4 and 333.3 (slope near 0)."""
    sizes = np.array([100, 10_000])
    errors = np.array([[0.1, 0.1, 1000.0], [0.01, 0.01, 1000.0]])
    median = rates.bootstrap_slope(sizes, errors, statistic="median")
    assert median["slope"] == pytest.approx(-0.5)
    mean = rates.bootstrap_slope(sizes, errors)
    assert mean["slope"] == pytest.approx(np.log(1000.02 / 1000.2) / np.log(100), rel=1e-9)
    with pytest.raises(ValueError, match="statistic must be one of mean, median"):
        rates.bootstrap_slope(sizes, errors, statistic="mode")


@pytest.mark.parametrize(
    "old, new",
    [
        ("softmoe_torch.settings.voronoi", "softmoe_torch.metrics.voronoi"),
        ("softmoe_torch.study.metrics", "softmoe_torch.metrics.rates"),
        ("softmoe_torch.study.distance", "softmoe_torch.metrics.hellinger"),
    ],
)
def test_old_module_paths_warn_and_give_the_same_functions(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        shim = importlib.import_module(old)
    moved = importlib.import_module(new)
    public = [n for n in dir(moved) if not n.startswith("_") and callable(getattr(moved, n))]
    assert public and all(getattr(shim, n) is getattr(moved, n) for n in public)


def test_old_names_of_the_sweep_and_the_paper_errors_still_import():
    from softmoe_torch.metrics.parameters import param_errors
    from softmoe_torch.settings import paper
    from softmoe_torch.settings.configs import config_number
    from softmoe_torch.study import config_checks, store, sweep

    assert paper.param_errors is param_errors
    assert sweep.config_number is config_number and sweep.fit_options is config_checks.fit_options
    assert (
        sweep.columns is store.columns and sweep.Results is store.Results and sweep.validate is config_checks.validate
    )


def _atoms(intercept, gate_slope, expert_slope, expert_bias, variance) -> dict:
    """One-dimensional atoms (d = q = 1) as ``voronoi.atoms`` lays them out."""
    return {
        "intercept": np.array(intercept, float),
        "gate_slope": np.array(gate_slope, float).reshape(-1, 1),
        "expert_slope": np.array(expert_slope, float).reshape(-1, 1),
        "expert_bias": np.array(expert_bias, float),
        "variance": np.array(variance, float),
    }


TRUE = _atoms([0.0, 0.0], [0.0, 10.0], [1.0, -1.0], [0.0, 5.0], [1.0, 2.0])
# three fitted atoms, cells 2+1: two around true atom 0 (gate slopes 0 +- 0.1, one expert slope off by
# 0.2), one at true atom 1 with its variance off by 0.5; fitted weights 1, 1, 2 (total 4, the truth's 2)
TWO_PLUS_ONE = _atoms([0.0, 0.0, np.log(2)], [0.1, -0.1, 10.0], [1.0, 1.2, -1.0], [0.0, 0.0, 5.0], [1.0, 1.0, 2.5])


def test_papers_loss_of_a_two_plus_one_fit_by_hand():
    """On the canonical scale the weights are 0.5, 0.5, 1 and the masses match (mu = 1); t1 = 0 is
    optimal (the two slopes sit symmetrically about the true one). D1 = 0.5 (0.1) + 0.5 (0.1 + 0.2)
    + 1 (0.5) = 0.7; D2 raises the cell of two to r = 4 (slopes, biases) and r/2 = 2 (expert slopes,
    variances): 0.5 (0.1^4) + 0.5 (0.1^4 + 0.2^2) + 1 (0.5) = 0.5201. Unscaled (weights 1, 1, 2)
    every atom term doubles: 1.4 and 1.0402."""
    from softmoe_torch.metrics.voronoi import papers_loss

    for kind, scaled, unscaled in (("d1", 0.7, 1.4), ("d2", 0.5201, 1.0402)):
        loss, t1, mu = papers_loss(kind, TWO_PLUS_ONE, TRUE)
        assert loss == pytest.approx(scaled, abs=1e-9) and abs(t1[0]) < 1e-8 and mu == pytest.approx(1.0)
        assert papers_loss(kind, TWO_PLUS_ONE, TRUE, scale=False)[0] == pytest.approx(unscaled, abs=1e-9)


def test_papers_loss_when_the_fitted_reference_sits_in_another_cell_by_hand():
    """The truth written with its component 1 as the reference (intercepts 0, -1; slopes 0, -2), the
    reference's variance off by 0.1. The canonical scale shifts the intercepts by log((1 + e) /
    (1 + 1/e)) = 1, t1 = 2 aligns the slopes, the masses match: D1 = D2 = e (0.1). Unscaled, the
    reference atom weighs 1: 0.1."""
    from softmoe_torch.metrics.voronoi import papers_loss

    true = _atoms([0.0, 1.0], [0.0, 2.0], [1.0, -1.0], [0.0, 3.0], [1.0, 0.5])
    fit = _atoms([0.0, -1.0], [0.0, -2.0], [-1.0, 1.0], [3.0, 0.0], [0.6, 1.0])
    for kind in ("d1", "d2"):
        loss, t1, mu = papers_loss(kind, fit, true)
        assert loss == pytest.approx(np.e * 0.1, abs=1e-9) and t1[0] == pytest.approx(2.0) and mu == pytest.approx(1.0)
        assert papers_loss(kind, fit, true, scale=False)[0] == pytest.approx(0.1, abs=1e-9)


def test_papers_loss_is_zero_at_the_truth_written_with_any_reference():
    from softmoe_torch.metrics.voronoi import papers_loss

    for reference in (0, 1):
        order = [reference, 1 - reference]
        written = {k: v[order] for k, v in TRUE.items()}
        written["intercept"] = written["intercept"] - written["intercept"][0]
        written["gate_slope"] = written["gate_slope"] - written["gate_slope"][0]
        for kind in ("d1", "d2"):
            assert papers_loss(kind, written, TRUE)[0] == pytest.approx(0.0, abs=1e-9)


def test_papers_loss_is_unchanged_when_every_fitted_logit_is_translated():
    """The softmax gate is the same under (b0_i, b1_i) -> (b0_i + s0, b1_i + s1): so is the loss,
    thanks to the canonical scale (s0) and the infimum over t1 (s1). Not so without the scale."""
    from softmoe_torch.metrics.voronoi import papers_loss

    rng = np.random.default_rng(0)
    fit = {k: v + 0.05 * rng.standard_normal(v.shape) for k, v in TWO_PLUS_ONE.items()}
    for kind in ("d1", "d2"):
        base = papers_loss(kind, fit, TRUE)[0]
        for s0, s1 in ((3.0, 0.0), (-2.0, 1.5), (0.7, -4.0)):
            moved = {**fit, "intercept": fit["intercept"] + s0, "gate_slope": fit["gate_slope"] + s1}
            assert papers_loss(kind, moved, TRUE)[0] == pytest.approx(base, rel=1e-6)
        moved = {**fit, "intercept": fit["intercept"] + 3.0}
        assert papers_loss(kind, moved, TRUE, scale=False)[0] > 10 * papers_loss(kind, fit, TRUE, scale=False)[0]


def test_papers_loss_has_no_cap():
    """An atom of the cell of two 30 off in its expert slope: D2 takes it at r / 2 = 2 with its
    canonical weight 0.5, 0.5 (0.1^4) + 0.5 (0.1^4 + 30.2^2) + 1 (0.5) = 456.5201 (the translation
    of the fitted measure that the sweeps once used capped every loss at sum_j exp(b0*_j) = 2)."""
    from softmoe_torch.metrics.voronoi import papers_loss

    far = {**TWO_PLUS_ONE, "expert_slope": TWO_PLUS_ONE["expert_slope"] + np.array([[0.0], [30.0], [0.0]])}
    assert papers_loss("d2", far, TRUE)[0] == pytest.approx(456.5201, abs=1e-6)
