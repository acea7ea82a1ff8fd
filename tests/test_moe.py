"""The general mixture of experts: every component frozen or trainable, component 0 the gate's
reference; its formula, fits (EM never lowers the likelihood, frozen parts never move, the fused
path's optimum is autograd's), the sibling study's setting and the fit command on it."""

import itertools
import json
import os
import subprocess
import sys

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
    MixtureOfExperts,
    SoftmaxGate,
    TanhExpert,
)
from softmoe_torch.estimation.degeneracy import degeneracy, trainable_sizes
from softmoe_torch.estimation.inference import load_params
from softmoe_torch.estimation.init import spread_truth
from softmoe_torch.metrics.voronoi import atoms, papers_loss, theory_slope, voronoi_errors
from softmoe_torch.settings.moe import QUANTITIES
from softmoe_torch.settings.setting import load_setting


def sibling(eta0=20.0, b0=-5.0, eta1=-20.0, b1=15.0, beta=25.0, tau=-8.0):
    """The sibling paper's true model (component 0 is its expert 2, the gate's reference)."""
    return MixtureOfExperts(
        [
            Component(AffineExpert(1, eta=[eta0], bias=b0), Gaussian(), nu=0.16),
            Component(AffineExpert(1, eta=[eta1], bias=b1), Gaussian(), nu=0.09),
        ],
        SoftmaxGate(1, 1, beta=[beta], tau=[tau]),
    ).double()


def sibling_data(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 1, generator=gen, dtype=torch.float64)
    return X, sibling().sample(X, generator=gen)


def test_affine_expert_is_eta_x_plus_bias():
    e = AffineExpert(3, eta=[1.0, -2.0, 0.5], bias=0.7).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    torch.testing.assert_close(e(x), x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.7)


def test_log_prob_is_the_softmax_gated_formula():
    """K = 3, the middle component frozen: log p = log sum_k softmax(0, a_1, a_2)_k N/Laplace(y | ...)."""
    d = 2
    comps = [
        Component(AffineExpert(d, eta=[1.0, 0.0], bias=0.5), Gaussian(), nu=0.3),
        Component(TanhExpert(d, eta=[0.0, 1.0]), Laplace(), nu=0.2, frozen=True),
        Component(AffineExpert(d, eta=[-1.0, 1.0], bias=-0.5), Gaussian(), nu=0.1),
    ]
    beta, tau = torch.tensor([[0.5, -1.0], [1.0, 0.3]]), torch.tensor([0.2, -0.4])
    m = MixtureOfExperts(comps, SoftmaxGate(d, 2, beta=beta, tau=tau)).double()
    x, y = torch.randn(30, d, dtype=torch.float64), torch.randn(30, dtype=torch.float64)
    logits = torch.cat([torch.zeros(30, 1, dtype=torch.float64), x @ beta.double().T + tau.double()], 1)
    w = torch.softmax(logits, 1)
    f = torch.stack(
        [
            torch.distributions.Normal(x[:, 0] + 0.5, 0.3**0.5).log_prob(y).exp(),
            torch.distributions.Laplace(torch.tanh(x[:, 1]), (0.2 / 2) ** 0.5).log_prob(y).exp(),
            torch.distributions.Normal(-x[:, 0] + x[:, 1] - 0.5, 0.1**0.5).log_prob(y).exp(),
        ],
        1,
    )
    torch.testing.assert_close(m.log_prob(x, y), torch.log((w * f).sum(1)))
    torch.testing.assert_close(m.responsibilities(x, y), w * f / (w * f).sum(1, keepdim=True))
    assert set(m.trainable_parameters()) == {
        "components.0.nu",
        "components.0.expert.eta",
        "components.0.expert.bias",
        "components.2.nu",
        "components.2.expert.eta",
        "components.2.expert.bias",
        "gate.beta",
        "gate.tau",
    }


def test_contaminated_moe_is_the_mixture_with_a_frozen_first_component():
    pre = Component(TanhExpert(2, eta=[1.0, 0.0]), Laplace(), nu=0.01, frozen=True)
    prompt = Component(TanhExpert(2, eta=[-1.0, 0.5]), Gaussian(), nu=0.02)
    gate = SoftmaxGate(2, beta=[0.3, -0.2], tau=0.4)
    a = ContaminatedMoE(pre, prompt, gate).double()
    b = MixtureOfExperts([pre, prompt], gate).double()
    x, y = torch.randn(20, 2, dtype=torch.float64), 0.3 * torch.randn(20, dtype=torch.float64)
    torch.testing.assert_close(a.log_prob(x, y), b.log_prob(x, y))
    assert a.component_names() == ["pretrained", "prompts.0"] and b.component_names() == [
        "components.0",
        "components.1",
    ]


def test_a_mixture_needs_two_components():
    with pytest.raises(ValueError, match="at least 2 components"):
        MixtureOfExperts([Component(AffineExpert(1), Gaussian())], SoftmaxGate(1, 0))


@pytest.mark.parametrize("method", ["em", "newton"])
def test_fits_recover_the_sibling_model_and_the_fused_optimum_is_autogradients(method, one_thread):
    X, y = sibling_data(4000)
    truth = {k: v.detach() for k, v in sibling().trainable_parameters().items()}
    bounds = {"real": 100.0, "positive": [1e-6, 1e3]}
    # EM's default tol (1e-8 on the mean log-likelihood's change in an iteration) lets a fit stop short of the
    # optimum by more than this test's 1e-6 of the 4000 samples' log-likelihood (7.3e-6 seen), and the two paths,
    # equal to rounding, may stop after different iterations; at tol 1e-12 both end within about 1e-8 of the
    # optimum (Newton's tol is 1e-12 already)
    tight = {"tol": 1e-12} if method == "em" else {}
    estimator = Estimator(sibling(), method, init="near_truth", truth=truth, bounds=bounds, **tight)
    fused, generic = estimator.fit(X, y), estimator.clone(fused=False).fit(X, y)
    assert fused.fused and not generic.fused and fused.converged.all() and generic.converged.all()
    assert float(fused.loglik[0]) == pytest.approx(float(generic.loglik[0]), abs=1e-6)
    est = fused.estimates()
    assert abs(float(est["gate.beta"]) - 25) < 5 and abs(float(est["components.1.expert.bias"]) - 15) < 0.2
    if method == "em":  # EM never lowers the likelihood
        trace = np.asarray(fused.trace[0])
        assert (np.diff(trace) >= -1e-9 * np.abs(trace[1:])).all()


def test_random_starts_fitted_first_on_a_subsample_reach_the_same_optimum(one_thread):
    """Five random starts each fitted first on 2000 of 12000 samples, then on all from there: the best
    fit's log-likelihood is that of the starts fitted on all from the beginning, and its last stage
    took under half their iterations; where n is at most twice the subsample nothing changes."""
    X, y = sibling_data(12000, seed=3)
    bounds = {"real": 100.0, "positive": [1e-6, 1e3]}
    plain = Estimator(sibling(), "newton", bounds=bounds).fit(X, y)
    sub = Estimator(sibling(), "newton", bounds=bounds, subsample=2000).fit(X, y)
    assert plain.converged.all() and sub.converged.all()
    assert float(sub.mean_loglik[0]) == pytest.approx(float(plain.mean_loglik[0]), abs=1e-9)
    assert int(sub.n_iter[0]) < int(plain.n_iter[0]) / 2
    same = Estimator(sibling(), "newton", bounds=bounds, subsample=6000).fit(X, y)
    assert all(torch.equal(same.params[k], plain.params[k]) for k in plain.params)
    with pytest.raises(ValueError, match="subsample must be an integer"):
        Estimator(sibling(), "newton", subsample=0)
    with pytest.raises(ValueError, match="random starts"):
        Estimator(sibling(), "newton", init="near_truth", subsample=100)


def test_a_frozen_component_never_moves():
    X, y = sibling_data(2000, seed=1)
    spec = sibling()
    spec.components[0].requires_grad_(False)
    spec.components[0].frozen = True
    before = {k: v.clone() for k, v in spec.components[0].state_dict().items()}
    res = Estimator(spec, "em", n_init=2, bounds={"real": 100.0, "positive": [1e-6, 1e3]}).fit(X, y)
    assert all(not k.startswith("components.0.") for k in res.params)
    fitted = res.model().components[0].state_dict()
    assert all(torch.equal(before[k], fitted[k]) for k in before)


def test_degenerate_components_are_named_as_components():
    X, _ = sibling_data(500)
    m = sibling()
    with torch.no_grad():
        m.components[1].nu.fill_(1e-6)
        m.gate.tau.fill_(-60.0)
    reasons = degeneracy(m, ["components.1.nu"], X, trainable_sizes(m))
    assert any("component 1's variance 1e-06 is on its lower bound" in r for r in reasons)
    assert any("component 1's gate opens on about" in r for r in reasons)


def test_the_sibling_setting_builds_exact_and_over_specified_models(compose_cfg):
    cfg = compose_cfg(["setting=softmax_gaussian_moe", "data=x"], "fit_data").setting
    s = load_setting(cfg)
    assert (s.n_components, s.n_true) == (2, 2)
    truth = s.truth()
    assert float(truth["gate.tau"]) == -8.0 and float(truth["components.1.nu"]) == 0.09
    cfg.n_components = 4
    over = load_setting(cfg).model()
    assert len(over.components) == 4 and over.gate.beta.shape == (3, 1)
    cfg.x = "grid"
    torch.testing.assert_close(load_setting(cfg).inputs(5)[:, 0], torch.linspace(0, 1, 5, dtype=torch.float64))


def test_fit_command_fits_a_csv_of_the_sibling_model(tmp_path):
    X, y = sibling_data(3000, seed=2)
    path = tmp_path / "d.csv"
    np.savetxt(path, np.column_stack([X.numpy(), y.numpy()]), delimiter=",", header="x1,y", comments="", fmt="%.17g")
    out = tmp_path / "r.json"
    proc = run_cli("softmoe_torch.fit", f"data={path}", "setting=softmax_gaussian_moe", "fit=newton", f"out={out}")
    assert proc.returncode == 0, proc.stderr
    assert "every component is trainable" in proc.stdout and "Mixture-of-experts fit (newton_eigen)" in proc.stdout
    r = json.loads(out.read_text())
    assert r["converged"] and set(r["estimates"]) == set(r["se"]) == set(r["ci95"]["lower"])
    slopes = sorted(r["estimates"][f"components.{k}.expert.eta"][0] for k in (0, 1))
    assert slopes == pytest.approx([-20, 20], abs=1.0)  # the two experts, in either order
    assert r["starts"] == "best of 5 random start(s)"  # 3000 samples: no subsample stage below 2 x 10000
    sub = tmp_path / "s.json"
    args = ["setting=softmax_gaussian_moe", "fit=newton", "init.subsample=1000", f"out={sub}"]
    proc = run_cli("softmoe_torch.fit", f"data={path}", *args)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(sub.read_text())
    assert s["starts"] == "best of 5 random start(s), each first fitted on 1000 of the 3000 samples drawn at random"
    assert s["loglik"] == pytest.approx(r["loglik"], abs=1e-6)
    bad = run_cli("softmoe_torch.fit", f"data={path}", "setting=softmax_gaussian_moe", "init.subsample=0")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "init.subsample" in bad.stderr


def test_spreading_the_truth_over_more_components_keeps_the_mixture():
    """An over-specified start without noise is the true mixture itself: every true component
    gets a cell, a cell of m shares its gate weight (logit - log m), component 0 stays the reference."""
    truth = {k: v.detach() for k, v in sibling().trainable_parameters().items()}
    x, y = torch.rand(50, 1, dtype=torch.float64), 10 * torch.randn(50, dtype=torch.float64)
    for K, seed in itertools.product((2, 3, 4), range(4)):
        model = MixtureOfExperts(
            [Component(AffineExpert(1), Gaussian()) for _ in range(K)], SoftmaxGate(1, K - 1)
        ).double()
        start = spread_truth(model, truth, torch.Generator().manual_seed(seed))
        assert set(start) == set(model.trainable_parameters())
        cells = [0] + [0 if abs(float(start[f"components.{k}.nu"]) - 0.16) < 1e-6 else 1 for k in range(1, K)]
        assert set(cells) == {0, 1} and float(start["components.0.nu"]) == pytest.approx(0.16)
        torch.testing.assert_close(
            load_params(model, {k: v[None] for k, v in start.items()}, 0).log_prob(x, y), sibling().log_prob(x, y)
        )


def test_over_specified_near_truth_starts_do_not_depend_on_string_hashing():
    """The same seed gives the same over-specified start in processes with different PYTHONHASHSEED
    (a set of the gate's parameter names once ordered the random draws, so starts changed with it)."""
    truth = {k: v.detach().tolist() for k, v in sibling().trainable_parameters().items()}
    code = (
        "import torch\n"
        "from softmoe_torch import AffineExpert, Component, Gaussian, MixtureOfExperts, SoftmaxGate\n"
        "from softmoe_torch.estimation.init import near_truth\n"
        f"truth = {{k: torch.tensor(v, dtype=torch.float64) for k, v in {truth!r}.items()}}\n"
        "experts = [Component(AffineExpert(1), Gaussian()) for _ in range(3)]\n"
        "model = MixtureOfExperts(experts, SoftmaxGate(1, 2)).double()\n"
        "start = near_truth(model, truth, 1, 0.1, 7)\n"
        "print(repr({k: v.tolist() for k, v in sorted(start.items())}))\n"
    )
    outs = set()
    for hash_seed in ("0", "1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        outs.add(proc.stdout)
    assert len(outs) == 1


def moved(atoms_, **shift):
    """A copy of atoms with the given arrays added."""
    return {k: v + shift.get(k, 0.0) for k, v in atoms_.items()}


def sibling_atoms(**kw):
    model = sibling(**kw)
    names = [f"components.{k}" for k in range(2)]
    a = atoms({k: v.detach()[None].numpy() for k, v in model.trainable_parameters().items()}, names, 0)
    return a


def test_voronoi_losses_of_the_truth_are_zero_and_translation_only_moves_the_fixed_variant():
    true = sibling_atoms()
    e = voronoi_errors(true, true, "d1")
    in_cells = [q for q in QUANTITIES if q.endswith("_in_cells")]  # no cell of several atoms: NaN
    assert all(np.isnan(e.pop(q)) for q in in_cells) and e | {"cells": 0} == {
        q: 0.0 for q in QUANTITIES if q not in in_cells
    } | {"cells": 0}
    shifted = moved(true, intercept=np.array([0.7, 0.7]), gate_slope=np.array([[1.5], [1.5]]))  # the same gate
    e = voronoi_errors(shifted, true, "d1")
    assert e["d1"] == pytest.approx(0, abs=1e-9) and e["d2"] == pytest.approx(0, abs=1e-9) and e["cells"] == "1+1"
    assert e["d1_fixed"] == pytest.approx(
        abs(np.exp(0.7) - 1) + abs(np.exp(-7.3) - np.exp(-8)) + np.exp(0.7) * 1.5 + np.exp(-7.3) * 1.5
    )


def test_d1_is_the_formula_and_label_order_does_not_matter():
    true = sibling_atoms()
    fit = moved(
        true, expert_bias=np.array([0.01, -0.02]), variance=np.array([0.003, 0.0]), intercept=np.array([0.0, 0.05])
    )
    expected = abs(np.exp(-7.95) - np.exp(-8)) + 1.0 * (0.01 + 0.003) + np.exp(-7.95) * 0.02
    assert papers_loss("d1", fit, true, scale=False, translate=False)[0] == pytest.approx(expected)
    assert papers_loss("d1", fit, true, scale=False)[0] <= expected + 1e-12
    swapped = {k: v[::-1].copy() for k, v in fit.items()}  # component 1 becomes the reference: logits minus its own
    swapped["gate_slope"] = swapped["gate_slope"] - swapped["gate_slope"][0]
    swapped["intercept"] = swapped["intercept"] - swapped["intercept"][0]
    assert papers_loss("d1", swapped, true)[0] == pytest.approx(papers_loss("d1", fit, true)[0], abs=1e-9)
    assert papers_loss("d1", swapped, true, scale=False, translate=False)[0] > 1


def test_d2_raises_the_differences_in_a_cell_of_two_to_its_exponents():
    """Two atoms in the reference cell (each half its weight), one exactly on true component 1:
    D2 = sum_i 1/2 (|Db1|^4 + |Dc|^4 + |Da|^2 + |Dv|^2) with no mass or translation error."""
    true = sibling_atoms()
    da, dc, dv = np.array([0.1, -0.2]), np.array([0.05, 0.02]), np.array([0.01, 0.004])
    fit = {
        "intercept": np.array([0.0, 0.0, -8 + np.log(2)]),
        "gate_slope": np.array([[0.0], [0.0], [25.0]]),
        "expert_slope": np.array([[20 + da[0]], [20 + da[1]], [-20.0]]),
        "expert_bias": np.array([-5 + dc[0], -5 + dc[1], 15.0]),
        "variance": np.array([0.16 + dv[0], 0.16 + dv[1], 0.09]),
    }
    e = voronoi_errors(fit, true, "d2")
    assert e["cells"] == "2+1"
    assert e["d2"] == pytest.approx(sum(0.5 * (dc[i] ** 4 + da[i] ** 2 + dv[i] ** 2) for i in range(2)), rel=1e-6)
    assert e["d2_fixed"] > 1  # untranslated, the reference cell's mass is 2 against 1
    assert e["d1"] == pytest.approx(sum(0.5 * (abs(dc[i]) + abs(da[i]) + abs(dv[i])) for i in range(2)), rel=1e-6)
    assert theory_slope("gate_slope", 2, exact=False) == -1 / 8 and theory_slope("variance", 3, exact=False) == -1 / 6
    assert theory_slope("d2", 3, exact=False) == -0.5 and theory_slope("d2_fixed", 2, exact=False) is None


def test_errors_in_a_cell_of_two_are_weighted_by_the_atoms_shares_at_the_losss_powers():
    """The cell of two above with weights 1 : 3 (shares 1/4, 3/4 of the cell's mass), the gate slopes
    exact: each part's power mean over the cell at D2's power, (1/4 |D_0|^q + 3/4 |D_1|^q)^(1/q), q = 4
    for biases (and gate slopes), 2 for expert slopes and variances; the plain maxima beside them."""
    true = sibling_atoms()
    da, dc, dv = np.array([0.1, -0.2]), np.array([0.05, 0.02]), np.array([0.01, 0.004])
    fit = {
        "intercept": np.array([0.0, np.log(3), -8 + np.log(4)]),
        "gate_slope": np.array([[0.0], [0.0], [25.0]]),
        "expert_slope": np.array([[20 + da[0]], [20 + da[1]], [-20.0]]),
        "expert_bias": np.array([-5 + dc[0], -5 + dc[1], 15.0]),
        "variance": np.array([0.16 + dv[0], 0.16 + dv[1], 0.09]),
    }
    e = voronoi_errors(fit, true, "d2")
    assert e["cells"] == "2+1" and e["gate_slope_in_cells"] == pytest.approx(0.0, abs=1e-6)
    assert e["expert_bias_in_cells"] == pytest.approx((0.05**4 / 4 + 3 * 0.02**4 / 4) ** 0.25, rel=1e-6)
    assert e["expert_slope_in_cells"] == pytest.approx(np.sqrt(0.1**2 / 4 + 3 * 0.2**2 / 4), rel=1e-6)
    assert e["variance_in_cells"] == pytest.approx(np.sqrt(0.01**2 / 4 + 3 * 0.004**2 / 4), rel=1e-6)
    assert e["expert_slope"] == pytest.approx(0.2, rel=1e-6) and e["expert_bias"] == pytest.approx(0.05, rel=1e-6)
    assert theory_slope("expert_bias_in_cells", 2, exact=False) == -1 / 8
    assert theory_slope("expert_slope_in_cells", 2, exact=False) == -1 / 4
    assert theory_slope("gate_slope_in_cells", 1, exact=True) is None


def test_saddle_free_newton_leaves_the_saddles_of_an_over_specified_fit(one_thread):
    """K = 3 fitted to the K = 2 truth from the spread truth (a saddle: duplicated atoms): Newton
    on |H| where H is indefinite needs far fewer iterations than the BFGS fallback, to an optimum
    at least as good."""
    X, y = sibling_data(4000, seed=3)
    spec = MixtureOfExperts([Component(AffineExpert(1), Gaussian()) for _ in range(3)], SoftmaxGate(1, 2)).double()
    truth = {k: v.detach() for k, v in sibling().trainable_parameters().items()}
    fits = {
        how: Estimator(
            spec,
            "newton",
            init="near_truth",
            truth=truth,
            init_scale=0.02,
            bounds={"real": 100.0, "positive": [1e-6, 1e3]},
            indefinite=how,
        ).fit(X, y)
        for how in ("bfgs", "eigen")
    }
    assert fits["eigen"].solver == "newton_eigen" and fits["eigen"].converged[0]
    assert int(fits["eigen"].n_iter[0]) < int(fits["bfgs"].n_iter[0]) / 2
    assert float(fits["eigen"].loglik[0]) >= float(fits["bfgs"].loglik[0]) - 1e-6
    with pytest.raises(ValueError, match="fit.indefinite must be one of bfgs, eigen"):
        Estimator(spec, "newton", indefinite="abs")


def test_a_sweep_of_an_over_specified_fit_reports_voronoi_losses(tmp_path):
    """The run command on the sibling setting with K = 3: Voronoi columns, cells, the report's
    slopes beside theory (for the cells found) and the sibling's published slope."""
    out = tmp_path / "run"
    proc = run_cli(
        "softmoe_torch.run",
        "setting=softmax_gaussian_moe",
        "setting.n_components=3",
        "sweep=tiny",
        "sweep.n_min=2000",
        "sweep.n_max=4000",
        "fit=newton",
        "init=near_truth_shrinking",
        "init.n_init=2",
        "progress=false",
        "monitor.tensorboard=false",
        f"hydra.run.dir={out}",
    )
    assert proc.returncode == 0, proc.stderr
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert [c for c in header if c.startswith("err_")] == [f"err_{q}" for q in QUANTITIES] and "cells" in header
    slopes = json.loads((out / "slopes.json").read_text())
    assert slopes["reference"] == "sibling" and slopes["params"]["d2_fixed"]["paper"] == -1.181
    assert slopes["params"]["d2"]["theory"] == -0.5 and slopes["params"]["d2_fixed"]["theory"] is None
    assert "| d2 |" in (out / "report.md").read_text() and (out / "figure.png").stat().st_size > 0
