"""The science study's building blocks: the Hellinger distance, the per-fit diagnostics, the
expert and gate variants it runs, and that every one of its runs composes and validates."""

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT
from scipy import integrate

from softmoe_torch.metrics.hellinger import hellinger
from softmoe_torch.settings.setting import Setting
from softmoe_torch.study.config_checks import validate
from softmoe_torch.study.diagnostics import loglik_at_truth, moved_from_start

sys.path[:0] = [str(ROOT / "experiments" / "science"), str(ROOT / "experiments" / "paper")]
import science  # noqa: E402 (experiments/science/science.py)


def _pair(compose_cfg, n_fit=100000, setting="nondistinguishable_eta", extra=()):
    s = Setting(compose_cfg([f"setting={setting}", *extra]).setting)
    return s.true_model(1000), s.true_model(n_fit)


def _quad_h2(p, q, x):
    """1/2 int (sqrt p - sqrt q)^2 dy at one x (1, d), by adaptive quadrature."""

    def g(y):
        yy = torch.tensor([y], dtype=torch.float64)
        return 0.5 * (math.exp(0.5 * p.log_prob(x, yy).item()) - math.exp(0.5 * q.log_prob(x, yy).item())) ** 2

    means = [c.mean(x).item() for m in (p, q) for c in m.components]
    return integrate.quad(g, -4, 4, points=sorted(means), limit=800, epsabs=1e-15, epsrel=1e-12)[0]


@pytest.mark.parametrize("setting", ["nondistinguishable_eta", "nondistinguishable_nu"])
def test_hellinger_matches_adaptive_quadrature(compose_cfg, setting):
    p, q = _pair(compose_cfg, setting=setting)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for i in range(4):
        xi = x[i : i + 1]
        assert hellinger(p, q, xi) ** 2 == pytest.approx(_quad_h2(p, q, xi), rel=1e-4, abs=1e-12)


def test_hellinger_is_a_distance(compose_cfg):
    p, q = _pair(compose_cfg)
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert hellinger(p, p, x) == 0.0
    h = hellinger(p, q, x)
    assert 0 < h < 1 and h == pytest.approx(hellinger(q, p, x), rel=1e-9)
    with torch.no_grad():
        q.gate.tau.fill_(-30.0)  # the prompt switched off: only the pre-trained expert remains
        p.gate.tau.fill_(-30.0)
    assert hellinger(p, q, x) < 1e-6


def test_loglik_at_truth_and_moved(compose_cfg):
    s = Setting(compose_cfg(["setting=nondistinguishable_eta"]).setting)
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(2, 50, 8, generator=gen, dtype=torch.float64)
    Y = torch.stack([s.true_model(50).sample(x, generator=gen) for x in X])
    ll = loglik_at_truth(s.true_model(50), X, Y)
    assert ll[1].item() == pytest.approx(s.true_model(50).log_prob(X[1], Y[1]).mean().item(), rel=1e-12)
    start = {"a": torch.zeros(2, 3), "b": torch.zeros(2)}
    params = {"a": torch.tensor([[0.1, -0.5, 0.2], [0.0, 0.0, 0.0]]), "b": torch.tensor([0.3, -0.2])}
    assert moved_from_start([start], params).tolist() == pytest.approx([0.5, 0.2])
    assert torch.isnan(moved_from_start([start, start], params)).all()


@pytest.mark.parametrize("expert", ["tanh", "sigmoid", "gelu", "relu", "sigmoid_affine"])
def test_expert_variants_build_both_experts_and_the_truth(compose_cfg, expert):
    s = Setting(compose_cfg(["setting=nondistinguishable_eta", f"+expert={expert}"]).setting)
    model = s.true_model(4096)
    assert type(model.pretrained.expert) is type(model.prompts[0].expert)
    eta = model.prompts[0].expert.eta
    assert torch.allclose(eta, torch.eye(8, dtype=torch.float64)[0] * (1 + 4096**-0.125))
    if expert == "sigmoid_affine":
        assert model.prompts[0].expert.bias.item() == 0.0 and model.pretrained.expert.bias.item() == 0.0


def _jobs(overrides):
    """The single jobs of a multirun's overrides (comma lists expanded, except in ${...})."""
    choices = [
        [o]
        if "${" in o or "[" in o or "," not in o
        else [o.split("=", 1)[0] + "=" + v for v in o.split("=", 1)[1].split(",")]
        for o in overrides
    ]
    return [list(c) for c in itertools.product(*choices)]


@pytest.mark.parametrize("name", list(science.EXPERIMENTS))
def test_every_science_run_composes_and_validates(compose_cfg, name):
    for job in _jobs(science.EXPERIMENTS[name][1]):
        plan = validate(compose_cfg(job))
        assert plan.sizes[0] == 1000 and plan.reps


def test_a_tiny_science_style_run_writes_the_diagnostics(tmp_path):
    """The generic (autograd) path with the affine sigmoid and the Hellinger columns, through the CLI."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "softmoe_torch.run",
            "setting=nondistinguishable_eta",
            "sweep=tiny",
            "fit=newton",
            "+expert=sigmoid_affine",
            "hellinger_points=200",
            "progress=false",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    import csv

    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 4
    for r in rows:
        assert 0 < float(r["hellinger"]) < 1 and float(r["moved"]) > 0
        assert float(r["mean_loglik"]) >= float(r["loglik_truth"]) - 1e-9  # the MLE beats the truth on its data
        assert np.isfinite(float(r["err_eta"]))


def test_regenerating_the_paper_report_keeps_the_science_sections(tmp_path):
    import combine_report

    runs, out = tmp_path / "runs", tmp_path / "out"
    for name in combine_report.SETTINGS:
        (runs / name).mkdir(parents=True)
        (runs / name / "fingerprint.json").write_text('{"fit": {"method": "newton"}}')
        (runs / name / "figure.png").write_bytes(b"png")
        slopes = {
            "params": {
                "eta": {
                    "slope": -0.5,
                    "ci_low": -0.6,
                    "ci_high": -0.4,
                    "theory": -0.5,
                    "paper": None,
                    "verdict": "agrees",
                }
            },
            "n_fits": 1,
            "failed": 0,
            "not_converged": 0,
        }
        (runs / name / "slopes.json").write_text(__import__("json").dumps(slopes))
    (runs / "wall_seconds.txt").write_text("distinguishable 1\n")
    out.mkdir()
    science_part = f"{combine_report.KEEP}\n\n# Science\n\nverdicts\n"
    (out / "REPORT.md").write_text("# old reproduction\n\n" + science_part)
    combine_report.main(runs, out)
    text = (out / "REPORT.md").read_text()
    assert text.startswith("# Reproduction") and "# old reproduction" not in text
    assert text.endswith(science_part) and text.count(combine_report.KEEP) == 1


def test_the_science_script_runs_and_analyses_a_tiny_study(tmp_path, monkeypatch):
    """`science.py run` launches real multiruns through the CLI and `analyze` tabulates them."""
    tiny = ["fit=newton", "sweep.sizes=[400,600,900]", "sweep.reps=3"]
    monkeypatch.setattr(science, "HERE", tmp_path)
    monkeypatch.setattr(science, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(
        science,
        "EXPERIMENTS",
        {
            "q3_tanh": ("q3", ["setting=distinguishable,nondistinguishable_eta", *tiny]),
            "q3_experts": ("q3", ["setting=distinguishable,nondistinguishable_eta", "+expert=relu", *tiny]),
        },
    )
    science.main(["run", "--only", "q3"])
    assert set(__import__("json").loads((tmp_path / "wall_seconds.json").read_text())) == {"q3_tanh", "q3_experts"}
    science.analyze()
    tables = (tmp_path / "tables.md").read_text()
    assert "## q3_tanh" in tables and "setting=nondistinguishable_eta, expert=relu" in tables
    assert (tmp_path / "q3_experts.png").stat().st_size > 0 and (tmp_path / "fits.csv.gz").exists()
    with pytest.raises(SystemExit):
        science.main(["run", "--only", "q9"])  # unknown question: argparse's one-line error, exit 2
