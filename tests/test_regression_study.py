"""The sigmoid-gating study's layer: the least-squares papers' Voronoi loss by hand, the regression
setting's view, and its sweeps and fits through the real CLIs."""

import csv
import gzip
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import expit, logit

from softmoe_torch.metrics.voronoi import ls_errors, papers_loss, regression_atoms
from softmoe_torch.settings.regression_truths import draw_truth, near_truth_start

ROOT = Path(__file__).resolve().parents[1]


def _atoms(intercept, gate_slope, expert_slope, expert_bias) -> dict:
    """One-dimensional regression atoms (d = 1), variance column 0."""
    return {
        "intercept": np.array(intercept, float),
        "gate_slope": np.array(gate_slope, float).reshape(-1, 1),
        "expert_slope": np.array(expert_slope, float).reshape(-1, 1),
        "expert_bias": np.array(expert_bias, float),
        "variance": np.zeros(len(intercept)),
    }


TRUE = _atoms([0.0, 0.0], [0.0, 10.0], [1.0, -1.0], [0.0, 5.0])


def test_ls_loss_under_a_softmax_gate_by_hand():
    """Cells 2+1: two atoms about true atom 0 (gate slopes +-0.1, one expert slope off by 0.2), one
    at true atom 1 with its expert bias off by 0.5; fitted weights 1, 1, 2, on the canonical scale
    0.5, 0.5, 1 (masses match, t1 = 0 by symmetry). Squared terms in the cell of two, linear in the
    cell of one: 0.5 (0.1^2) + 0.5 (0.1^2 + 0.2^2) + 1 (0.5) = 0.53."""
    fit = _atoms([0.0, 0.0, np.log(2)], [0.1, -0.1, 10.0], [1.0, 1.2, -1.0], [0.0, 0.0, 5.5])
    loss, t1, mu = papers_loss("ls", fit, TRUE)
    assert loss == pytest.approx(0.53, abs=1e-9) and abs(t1[0]) < 1e-8 and mu == pytest.approx(1.0)
    e = ls_errors(fit, TRUE, "softmax")
    assert e["d1"] == pytest.approx(0.53, abs=1e-9) and e["cells"] == "2+1"
    assert e["gate_slope"] == pytest.approx(0.1) and e["expert_slope"] == pytest.approx(0.2)
    assert e["expert_bias"] == pytest.approx(0.5) and e["mass"] == pytest.approx(0.0, abs=1e-12)
    written = {k: v[[1, 0]] for k, v in TRUE.items()}  # the truth with its other component as reference
    written["intercept"], written["gate_slope"] = written["intercept"] * 0, written["gate_slope"] - 10
    assert ls_errors(written, TRUE, "softmax")["d1"] == pytest.approx(0.0, abs=1e-9)


def test_ls_loss_under_a_sigmoid_gate_by_hand():
    """True masses sigmoid(0) = 0.5 each; fitted weights 0.25, 0.25 in the cell of two (mass 0.5) and
    0.6 at true atom 1 (mass term 0.1): 0.25 (0.1^2) + 0.25 (0.1^2 + 0.2^2) + 0.6 (0.5) + 0.1 = 0.415.
    A sigmoid gate has no translation: the truth with every intercept + 1 is 2 |sigmoid(1) - 0.5| away."""
    fit = _atoms(logit([0.25, 0.25, 0.6]), [0.1, -0.1, 10.0], [1.0, 1.2, -1.0], [0.0, 0.0, 5.5])
    e = ls_errors(fit, TRUE, "sigmoid")
    assert e["d1"] == pytest.approx(0.415, abs=1e-9) and e["cells"] == "2+1"
    assert e["mass"] == pytest.approx(0.1, abs=1e-12)
    assert ls_errors(TRUE, TRUE, "sigmoid")["d1"] == 0.0
    shifted = {**TRUE, "intercept": TRUE["intercept"] + 1}
    assert ls_errors(shifted, TRUE, "sigmoid")["d1"] == pytest.approx(2 * (expit(1) - 0.5))
    with pytest.raises(ValueError, match="softmax or sigmoid"):
        ls_errors(TRUE, TRUE, "tanh")


@pytest.mark.parametrize("regime", ["softmax", "regime2"])
def test_regression_atoms_and_a_split_atom_are_the_truth(regime):
    """The study's truths laid out as atoms (a softmax gate's reference first, with b0 = b1 = 0); a
    fit that splits one true atom in two exactly (masses summing to its own) has loss 0."""
    truth = draw_truth(regime, "relu", d=4, k=3, seed=0)
    gate = "softmax" if regime == "softmax" else "sigmoid"
    params = {k: v.detach()[None].numpy() for k, v in truth.named_parameters()}
    true = regression_atoms(params, 3, gate, 0)
    rows = 3 if gate == "sigmoid" else 2
    assert true["gate_slope"].shape == (3, 4) and params["gate.beta"].shape == (1, rows, 4)
    if gate == "softmax":
        assert true["intercept"][0] == 0 and not true["gate_slope"][0].any()
    assert np.allclose(true["expert_slope"][1], params["experts.1.eta"][0])
    split = {k: np.concatenate([v, v[2:3]]) for k, v in true.items()}
    if gate == "sigmoid":
        half = logit(expit(true["intercept"][2]) / 2)
        split["intercept"][[2, 3]] = half
    else:
        split["intercept"][[2, 3]] = true["intercept"][2] - np.log(2)
    e = ls_errors(split, true, gate)
    assert e["d1"] == pytest.approx(0.0, abs=1e-9) and e["cells"] == "1+1+2"


def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    from softmoe_torch.settings.configs import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_the_regression_settings_compose_and_describe_the_study():
    from softmoe_torch.settings.setting import load_setting

    for name, regime in (
        ("sigmoid_moe", "softmax"),
        ("sigmoid_moe_regime1", "regime1"),
        ("sigmoid_moe_regime2", "regime2"),
    ):
        s = load_setting(_compose(f"setting={name}", "sweep=sigmoid_moe").setting)
        assert (s.dim, s.n_experts, s.n_true, s.regime) == (32, 9, 8, regime)
        model = s.model()
        assert len(model.experts) == 9 and sum(p.numel() for p in model.parameters()) == 594 - (
            33 if s.gate == "softmax" else 0
        )
        x = s.inputs(1000, torch.Generator().manual_seed(0))
        assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.99
    s = load_setting(_compose("setting=sigmoid_moe").setting)
    assert s.quantities() == ("d3", "fn") and s.reference_slopes() == {"d3": -0.51}  # sigmoid fit, softmax truth
    soft = load_setting(_compose("setting=sigmoid_moe", "setting.gate=softmax", "setting.expert=linear").setting)
    assert soft.reference_slopes() == {"d1": -0.11} and soft.theory_slopes()["d1"] is None  # linear experts: slow
    with pytest.raises(ValueError, match="setting.gate must be one of sigmoid, softmax"):
        load_setting(_compose("setting=sigmoid_moe", "setting.gate=tanh").setting)


def test_the_settings_errors_are_the_loss_of_the_fits_and_zero_at_the_truth():
    """``errors`` gives ls_errors of each fit and the function error sqrt(mean (f_hat - f*)^2) over
    its fixed x; the truth with one atom split in two (Regime 1: constant gates, so the split
    weights sum to the atom's for every x) has loss 0 and function error 0."""
    from softmoe_torch.settings.setting import load_setting

    s = load_setting(
        _compose(
            "setting=sigmoid_moe_regime1", "setting.dim=4", "setting.truth.n_experts=3", "setting.n_experts=4"
        ).setting
    )
    truth = s.true_model()
    start = near_truth_start(truth, "sigmoid", seed=3, scale=0.0)
    copy = [i for i in range(3) if torch.equal(start[f"experts.{i}.eta"], start["experts.3.eta"])][0]
    tau = start["gate.tau"].clone()
    tau[[copy, 3]] = torch.logit(torch.sigmoid(tau[copy]) / 2)
    exact = {**start, "gate.tau": tau}
    noisy = near_truth_start(truth, "sigmoid", seed=4, scale=0.1)
    params = {k: torch.stack([exact[k], noisy[k]]) for k in exact}
    e = s.errors(params, 100)
    assert e["err_d1"][0] == pytest.approx(0.0, abs=1e-9) and e["err_fn"][0] == pytest.approx(0.0, abs=1e-12)
    true = regression_atoms({k: v[None].numpy() for k, v in s.truth().items()}, 3, "sigmoid", 0)
    by_hand = ls_errors(regression_atoms({k: v.numpy() for k, v in params.items()}, 4, "sigmoid", 1), true, "sigmoid")
    assert e["err_d1"][1] == pytest.approx(by_hand["d1"]) and e["cells"][1] == by_hand["cells"]
    model = s.model()
    torch.nn.utils.vector_to_parameters(
        torch.cat([noisy[k].reshape(-1) for k, _ in model.named_parameters()]), model.parameters()
    )
    x = s.inputs(4096, torch.Generator().manual_seed(20250102))
    with torch.no_grad():
        fn = ((model(x) - truth(x)) ** 2).mean().sqrt()
    assert float(e["err_fn"][1]) == pytest.approx(float(fn), rel=1e-12)


def _run(args, cwd, env=None):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def test_a_regression_sweep_through_the_cli_by_both_estimators_on_the_same_data(tmp_path):
    """sgd and lm on the same data from the same start: the same loglik_truth per fit (the data),
    lm reaching a lower RSS than ten epochs of SGD on every data set, the report written."""
    rows = {}
    for method in ("sgd", "lm"):
        out = tmp_path / method
        p = _run(
            [
                "-m",
                "softmoe_torch.run",
                "setting=sigmoid_moe_regime2",
                "sweep=tiny",
                f"fit={method}",
                "setting.dim=4",
                "setting.truth.n_experts=2",
                "setting.n_experts=3",
                "monitor.tensorboard=false",
                "progress=false",
                f"hydra.run.dir={out}",
            ],
            tmp_path,
        )
        assert p.returncode == 0, p.stderr[-2000:]
        with open(out / "results.csv") as fh:
            rows[method] = list(csv.DictReader(fh))
        assert json.loads((out / "slopes.json").read_text())["params"]["d1"]["paper"] == -0.48
    assert len(rows["sgd"]) == len(rows["lm"]) == 4
    for a, b in zip(rows["sgd"], rows["lm"]):
        assert (a["n"], a["rep"], a["loglik_truth"]) == (b["n"], b["rep"], b["loglik_truth"])
        assert float(b["mean_loglik"]) > float(a["mean_loglik"])
        assert a["status"].startswith("finished") and not b["status"].startswith(("failed", "error"))
        assert math.isfinite(float(a["err_d1"])) and math.isfinite(float(b["err_fn"]))


def test_the_fit_cli_fits_a_regression_mixture_to_a_csv(tmp_path):
    truth = draw_truth("regime2", "relu", d=2, k=2, seed=1)
    X = 2 * torch.rand(1500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 1
    y = truth.sample(X, generator=torch.Generator().manual_seed(1))
    np.savetxt(tmp_path / "d.csv", np.column_stack([X, y]), delimiter=",", header="x1,x2,y", comments="")
    p = _run(
        [
            "-m",
            "softmoe_torch.fit",
            "data=d.csv",
            "setting=sigmoid_moe_regime2",
            "setting.n_experts=2",
            "fit=lm",
            "init.n_init=2",
            "out=fit.json",
        ],
        tmp_path,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads((tmp_path / "fit.json").read_text())
    assert result["method"] == "lm" and result["n"] == 1500 and result["warnings"] == []
    assert set(result["estimates"]) == {
        "experts.0.eta",
        "experts.0.bias",
        "experts.1.eta",
        "experts.1.bias",
        "gate.beta",
        "gate.tau",
    }
    assert result["mean_loglik"] > 0.8  # RSS / n near nu = 0.01: -(log(2 pi 0.01) + 1) / 2 = 0.88
    bad = _run(["-m", "softmoe_torch.fit", "data=d.csv", "setting=sigmoid_moe_regime2", "fit=em"], tmp_path)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "RegressionMoE" in bad.stderr


def test_the_fit_cli_starts_a_regression_setting_near_the_truth_as_the_study_does(tmp_path):
    """fit with init=near_truth on a regression setting starts where the setting's study starts (the
    truth's atoms plus a copy, ``starting_points`` seeded by the run's seed): the same fit as the API's
    from that start."""
    from hydra import compose, initialize_config_dir

    from softmoe_torch.fit import build_estimator
    from softmoe_torch.settings.configs import CONF_DIR
    from softmoe_torch.settings.regression import RegressionSetting
    from softmoe_torch.study.config_checks import init_options

    overrides = ["setting=sigmoid_moe_regime2", "setting.dim=2", "setting.truth.n_experts=2", "setting.n_experts=3"]
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("fit_data", overrides=[*overrides, "fit=lm", "init=near_truth"])
    setting = RegressionSetting(cfg.setting)
    X = setting.inputs(800, torch.Generator().manual_seed(0))
    y = setting.true_model().sample(X, generator=torch.Generator().manual_seed(1))
    np.savetxt(tmp_path / "d.csv", np.column_stack([X, y]), delimiter=",", header="x1,x2,y", comments="")
    p = _run(["-m", "softmoe_torch.fit", "data=d.csv", *overrides, "fit=lm", "init=near_truth", "out=f.json"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads((tmp_path / "f.json").read_text())
    assert result["starts"] == "sigmoid_moe_regime2's near-truth start"
    start = setting.starting_points(init_options(cfg), 800, [0], lambda i, j: int(cfg.seed))[0]
    api = build_estimator(cfg, setting.model(), policy="random")
    expected = api.fit(X, y, start={k: v[0] for k, v in start.items()}).estimates()
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(result["estimates"][name]), value.numpy(), rtol=1e-8, atol=1e-10)


# f*(x) = sigmoid(8 x - 4) (-4 x + 2) on [0, 1], fitted by a softmax-gated pair of linear experts
ONE_SIGMOID_EXPERT = [
    "setting=softmax_ridge_moe",
    "setting.expert=linear",
    "setting.truth.gate=sigmoid",
    "setting.truth.n_experts=1",
    "setting.n_experts=2",
    "~setting.truth.params",
    "+setting.truth.params={experts.0.eta: [-4.0], experts.0.bias: 2.0, gate.beta: [[8.0]], gate.tau: [-4.0]}",
    "+setting.best_fit={points: 500}",
]


def test_the_best_fit_of_a_misspecified_model_by_hand(tmp_path, monkeypatch):
    """A sigmoid-gated expert sigmoid(8 x - 4)(-4 x + 2) is a softmax-gated pair whose reference
    expert is 0: the projection finds exactly that (residual 0); D3 is the loss to it (0 at it, the
    loss of ls_errors elsewhere); computed once, then read from the cache."""
    from softmoe_torch.settings import regression
    from softmoe_torch.settings.setting import load_setting

    monkeypatch.setenv("SOFTMOE_CACHE", str(tmp_path))
    s = load_setting(_compose(*ONE_SIGMOID_EXPERT).setting)
    assert s.best_fit(compute=False) is None and not (tmp_path / "best_fits").exists()  # only read: none kept yet
    b = s.best_fit()
    assert b["rss"] < 1e-16 and b["starts"] == 1
    expected = {"experts.0.eta": [0.0], "experts.0.bias": 0.0, "experts.1.eta": [-4.0], "experts.1.bias": 2.0}
    for name, value in {**expected, "gate.beta": [[8.0]], "gate.tau": [-4.0]}.items():
        assert b["params"][name].numpy() == pytest.approx(np.array(value), abs=1e-6), name
    assert len(list((tmp_path / "best_fits").glob("*.pt"))) == 1
    monkeypatch.setenv("SOFTMOE_CACHE", "/proc/read-only")  # not writable: computed, kept nowhere, said so
    with pytest.warns(UserWarning, match="could not keep the best fit"):
        fresh = load_setting(_compose(*ONE_SIGMOID_EXPERT).setting).best_fit()
    assert torch.allclose(fresh["params"]["gate.beta"], b["params"]["gate.beta"])
    monkeypatch.setenv("SOFTMOE_CACHE", str(tmp_path))
    monkeypatch.setattr(regression, "project", lambda *a: pytest.fail("recomputed"))
    again = load_setting(_compose(*ONE_SIGMOID_EXPERT).setting).best_fit()
    assert torch.equal(again["params"]["gate.beta"], b["params"]["gate.beta"])
    read = load_setting(_compose(*ONE_SIGMOID_EXPERT).setting).best_fit(compute=False)
    assert torch.equal(read["params"]["gate.beta"], b["params"]["gate.beta"])
    for bad, message in (
        ("setting.best_fit.points=many", "setting.best_fit.points must be an integer"),
        ("+setting.best_fit.size=3", "setting.best_fit takes points"),
    ):
        with pytest.raises(ValueError, match=message):
            load_setting(_compose(*ONE_SIGMOID_EXPERT, bad).setting).best_fit()
    off = {k: v + 0.1 for k, v in b["params"].items()}
    params = {k: torch.stack([b["params"][k], off[k]]) for k in b["params"]}
    e = s.errors(params, 100)
    assert e["err_d3"][0] == pytest.approx(0.0, abs=1e-9) and math.isnan(e["err_d1"][0])
    ref = regression_atoms({k: v[None].numpy() for k, v in b["params"].items()}, 2, "softmax", 0)
    by_hand = ls_errors(regression_atoms({k: v.numpy() for k, v in params.items()}, 2, "softmax", 1), ref, "softmax")
    assert e["err_d3"][1] == pytest.approx(by_hand["d1"]) and e["cells"][1] == by_hand["cells"]


def test_a_misspecified_sweep_through_the_cli_reports_d3(tmp_path):
    """The sweep computes the best fit once before its fits (kept in $SOFTMOE_CACHE) and reports D3."""
    p = _run(
        [
            "-m",
            "softmoe_torch.run",
            *ONE_SIGMOID_EXPERT,
            "sweep=tiny",
            "fit=lm",
            "monitor.tensorboard=false",
            "progress=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
        env={**os.environ, "SOFTMOE_CACHE": str(tmp_path / "cache")},
    )
    assert p.returncode == 0, p.stderr[-2000:]
    with open(tmp_path / "run" / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(math.isfinite(float(r["err_d3"])) and r["err_d1"] == "nan" for r in rows)
    assert len(list((tmp_path / "cache" / "best_fits").glob("*.pt"))) == 1
    assert "| d3 |" in (tmp_path / "run" / "report.md").read_text()


def test_a_given_truth_on_the_unit_interval_the_ridge_comparison():
    """softmax_ridge_moe: the truth's values from the config, x ~ Uniform[0, 1], ridge experts
    sigmoid(a x + b) (or the same numbers as linear experts); a value that fits no parameter is one line."""
    from softmoe_torch.settings.setting import load_setting

    s = load_setting(_compose("setting=softmax_ridge_moe").setting)
    truth, x = s.true_model(), s.inputs(2000, torch.Generator().manual_seed(0))
    assert 0 <= x.min() and x.max() <= 1 and x.max() > 0.99
    point = torch.tensor([[0.25]], dtype=torch.float64)
    g1 = expit(8 * 0.25 - 4.0)
    by_hand = (1 - g1) * expit(-4 * 0.25 + 2) + g1 * expit(6 * 0.25 - 3)
    with torch.no_grad():
        assert float(truth(point)) == pytest.approx(by_hand, rel=1e-12)
    linear = load_setting(_compose("setting=softmax_ridge_moe", "setting.expert=linear").setting)
    by_hand = (1 - g1) * (-4 * 0.25 + 2) + g1 * (6 * 0.25 - 3)
    with torch.no_grad():
        assert float(linear.true_model()(point)) == pytest.approx(by_hand, rel=1e-12)
    assert s.theory_slopes()["d1"] == -0.5 and linear.theory_slopes()["d1"] is None
    for bad in ("+setting.truth.params.gate.extra=1", "setting.truth.params={experts.0.eta: [1.0, 2.0]}"):
        with pytest.raises(ValueError, match="setting.truth.params do not fit RegressionMoE"):
            load_setting(_compose("setting=softmax_ridge_moe", bad).setting).true_model()


def test_the_study_analyses_from_its_record_and_a_new_run_replaces_a_cells_rows(tmp_path, monkeypatch):
    """experiments/sigmoid_gating/study.py: a cell without a run folder is read from the committed record
    (fits.csv.gz), each row as its run wrote it (columns its run did not write dropped); a cell run again
    replaces its rows; the record written back keeps its columns' order and content; walls.json keeps a
    run's wall and takes a new run's."""
    monkeypatch.setenv("SOFTMOE_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location("sigmoid_study", ROOT / "experiments/sigmoid_gating/study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    a, b = "softmax_relu_sigmoid", "regime1_relu_softmax"
    header = ["estimator", "cell", "n", "err_d1", "err_d3", "seconds"]
    record = [
        ["sgd", a, "1000", "", "0.5", "1.0"],
        ["lm", a, "1000", "", "0.25", "2.0"],
        ["lm", b, "1000", "0.1", "", "3.0"],
    ]
    with gzip.open(tmp_path / "fits.csv.gz", "wt", newline="") as fh:
        csv.writer(fh).writerows([header, *record])
    (tmp_path / "walls.json").write_text(json.dumps({"lm": {a: 12.0, b: 34.0}, "sgd": {}}))
    run_dir = tmp_path / "runs" / "lm" / b
    run_dir.mkdir(parents=True)
    (run_dir / "results.csv").write_text("n,err_d3,seconds\n1000,0.75,4.0\n")
    (run_dir / "runs.json").write_text(json.dumps([{"seconds": 5.0}, {"seconds": 6.5}]))
    monkeypatch.setattr(study, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(study, "RECORD", tmp_path / "fits.csv.gz")
    monkeypatch.setattr(study, "WALLS", tmp_path / "walls.json")

    runs = {est: study.runs_of(est, study.recorded()) for est in study.ESTIMATORS}
    assert runs["sgd"] == {a: [{"n": "1000", "err_d3": "0.5", "seconds": "1.0"}]}
    assert runs["lm"][a] == [{"n": "1000", "err_d3": "0.25", "seconds": "2.0"}]
    assert runs["lm"][b] == [{"n": "1000", "err_d3": "0.75", "seconds": "4.0"}]  # the run folder's, not the record's
    assert study.walls() == {"lm": {a: 12.0, b: 11.5}, "sgd": {}}
    study.write_fits(runs)
    with gzip.open(tmp_path / "fits.csv.gz", "rt", newline="") as fh:
        assert list(csv.reader(fh)) == [
            header,
            ["sgd", a, "1000", "", "0.5", "1.0"],
            ["lm", a, "1000", "", "0.25", "2.0"],
            ["lm", b, "1000", "", "0.75", "4.0"],
        ]
