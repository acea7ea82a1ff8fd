"""Plug-ins from outside the package: user experts and densities, frozen pre-trained networks from
a checkpoint or TorchScript, K prompts, and one-line errors for plug-in mistakes."""

import csv
import json
import os
import runpy
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from softmoe_torch import Component, ContaminatedMoE, Gaussian, MLPExpert, SoftmaxGate, TanhExpert
from softmoe_torch.estimation.convergence import ConvergenceWarning
from softmoe_torch.estimation.driver import FitOptions, fit_batch
from softmoe_torch.estimation.init import random_start
from softmoe_torch.estimation.params import ParamSpace
from softmoe_torch.metrics.parameters import param_errors
from softmoe_torch.settings.setting import Setting
from softmoe_torch.study.simulate import simulate

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"),  # TorchScript: deprecated, still loads
    pytest.mark.usefixtures("one_thread"),
]

ROOT = Path(__file__).resolve().parents[1]
MLP = ["setting.prompt.expert._target_=user_mlp.MLPExpert", "++setting.prompt.expert.hidden=2"]
STUDENT_T = ["setting.prompt.density._target_=softmoe_torch.model.densities.StudentT", "++setting.prompt.density.df=5"]

BAD_EXPERTS = """
import torch
from torch import nn


class Expert(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.w = nn.Parameter(torch.ones(dim))


class Column(Expert):  # means of shape (n, 1), not (n,)
    def forward(self, x):
        return (x @ self.w)[:, None]


class LogMean(Expert):  # log of negative numbers: NaN
    def forward(self, x):
        return torch.log(x @ self.w)


class Scaled(nn.Module):  # a declared positive parameter: h = scale * tanh(eta^T x), scale > 0
    from torch.distributions import constraints
    param_constraints = {"scale": constraints.positive}

    def __init__(self, dim):
        super().__init__()
        self.eta = nn.Parameter(torch.zeros(dim))
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * torch.tanh(x @ self.eta)


class Branchy(Expert):  # a Python branch on a tensor value: fine alone, not under vmap
    def forward(self, x):
        z = x @ self.w
        return z if z.sum().item() > 0 else -z
"""


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A folder outside the package with the user's modules, on sys.path (as PYTHONPATH would)."""
    d = tmp_path / "user"
    d.mkdir()
    shutil.copy(ROOT / "experiments" / "examples" / "mlp_expert.py", d / "user_mlp.py")
    (d / "bad_experts.py").write_text(BAD_EXPERTS)
    monkeypatch.syspath_prepend(str(d))
    yield d
    for name in ("user_mlp", "bad_experts"):
        sys.modules.pop(name, None)


def cfg(overrides=()):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def cli(module, *args):
    """`python -m module args` in this process (runpy, as python -m does): exit code."""
    argv = sys.argv
    sys.argv = [module, *args]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: module already imported
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as exc:
        return exc.code
    finally:
        sys.argv = argv


def save_data(path, overrides, n, seed=0):
    """Simulate n draws from the setting with ``overrides`` into an .npz; returns the Setting."""
    setting = Setting(cfg(overrides).setting)
    X, Y = simulate(setting, n, [0], seed=seed)
    np.savez(path, X=X[0].numpy(), y=Y[0].numpy())
    return setting


def test_external_expert_and_density_run_and_fit_as_subprocesses(tmp_path, user_dir):
    """A class defined outside the package, on PYTHONPATH, through both command-line entries."""
    work = tmp_path / "work"
    work.mkdir()
    path = os.pathsep.join(p for p in (str(user_dir), os.environ.get("PYTHONPATH")) if p)  # keep the tree under test
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "softmoe_torch.run",
            "sweep=tiny",
            "fit=direct",
            *MLP,
            *STUDENT_T,
            "progress=false",
            "monitor.tensorboard=false",
            f"hydra.run.dir={work / 'run'}",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    with open(work / "run" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and not any(r["status"].startswith("failed") for r in rows)
    assert all(np.isfinite(float(r["err_eta"])) for r in rows)  # the distance over all MLP parameters

    setting = save_data(work / "d.npz", MLP + STUDENT_T, 800)
    out = work / "r.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "softmoe_torch.fit",
            "data=d.npz",
            "setting=distinguishable",
            "fit=direct",
            *MLP,
            *STUDENT_T,
            f"out={out}",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert "eta" not in r and set(r["expert"]) == {"hidden.weight", "hidden.bias", "out.weight", "out.bias"}
    assert np.array(r["expert"]["hidden.weight"]).shape == (2, 8)
    assert set(r["se"]["expert"]) == set(r["expert"]) and np.isfinite(r["se"]["tau"])
    assert r["n_params"] == 8 + 1 + (2 * 8 + 2 + 2 + 1) + 1
    assert r["aic"] == pytest.approx(2 * r["n_params"] - 2 * r["loglik"])
    truth = setting.truth(800)
    assert abs(r["nu"] - float(truth["prompts.0.nu"])) < 5 * r["se"]["nu"]


SCALED = ["setting.prompt.expert._target_=bad_experts.Scaled", "++setting.truth.expert_checkpoint={tmp}/scaled.pt"]


def test_plugin_with_a_declared_positive_parameter_through_run_and_fit(tmp_path, user_dir):
    """scale is declared positive: it is mapped through biject_to(positive), starts positive, is
    bounded by fit.bounds.positive and recovered, through both command-line entries."""
    import bad_experts

    truth = bad_experts.Scaled(8)
    with torch.no_grad():
        truth.eta.copy_(-torch.eye(8)[0])
        truth.scale.fill_(0.7)
    torch.save(truth.state_dict(), tmp_path / "scaled.pt")
    overrides = [o.format(tmp=tmp_path) for o in SCALED]
    space = ParamSpace(Setting(cfg(overrides).setting).model(), {"positive": [1e-3, 10.0]})
    assert space.intervals[space.names.index("prompts.0.expert.scale")] == (1e-3, 10.0)
    run = tmp_path / "run"
    assert (
        cli(
            "softmoe_torch.run",
            "sweep=tiny",
            "fit=newton",
            *overrides,
            "progress=false",
            "monitor.tensorboard=false",
            f"hydra.run.dir={run}",
        )
        == 0
    )
    with open(run / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and all(r["status"] == "converged" for r in rows)
    setting = save_data(tmp_path / "d.npz", overrides, 3000, seed=2)
    assert float(setting.truth(3000)["prompts.0.expert.scale"]) == pytest.approx(0.7)
    out = tmp_path / "r.json"
    assert (
        cli(
            "softmoe_torch.fit",
            f"data={tmp_path / 'd.npz'}",
            "setting=distinguishable",
            "fit=newton",
            *overrides,
            f"out={out}",
            f"hydra.run.dir={tmp_path}",
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert 0 < r["expert"]["scale"] and abs(r["expert"]["scale"] - 0.7) < 4 * r["se"]["expert"]["scale"]


def test_truth_of_a_general_expert_is_seeded_and_its_error_is_a_parameter_distance(user_dir):
    setting = Setting(cfg(MLP).setting)
    a, b = setting.truth(500), setting.truth(2000)
    expert = [k for k in a if k.startswith("prompts.0.expert.")]
    assert sorted(expert) == [
        f"prompts.0.expert.{k}" for k in ("hidden.bias", "hidden.weight", "out.bias", "out.weight")
    ]
    for k in expert:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    est = {k: v.unsqueeze(0) + 0.01 for k, v in a.items()}
    flat = torch.cat([(est[k][0] - a[k]).reshape(-1) for k in sorted(expert)])
    torch.testing.assert_close(param_errors(est, a)["eta"], flat.norm()[None])


def test_student_t_prompt_fits_through_the_cli(tmp_path):
    overrides = ["setting=distinguishable", *STUDENT_T]
    setting = save_data(tmp_path / "d.npz", overrides, 2000, seed=4)
    assert type(setting.model().prompts[0].density).__name__ == "StudentT"
    out = tmp_path / "r.json"
    assert (
        cli(
            "softmoe_torch.fit",
            f"data={tmp_path / 'd.npz'}",
            "setting=distinguishable",
            "fit=direct",
            *overrides,
            f"out={out}",
            f"hydra.run.dir={tmp_path}",
        )
        == 0
    )
    r = json.loads(out.read_text())
    truth = setting.truth(2000)
    assert r["converged"]
    assert abs(r["nu"] - float(truth["prompts.0.nu"])) < 4 * r["se"]["nu"]
    assert abs(r["tau"] - float(truth["gate.tau"][0])) < 4 * r["se"]["tau"]


@pytest.fixture
def task_a_net(tmp_path):
    """A random 'pre-trained' MLP (8 -> 5 -> 1), saved as a state dict and as TorchScript."""
    torch.manual_seed(3)
    net = MLPExpert(8, hidden=5).double()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    torch.jit.trace(net, torch.randn(4, 8, dtype=torch.float64)).save(str(tmp_path / "net.ts"))
    return net


@pytest.mark.parametrize(
    "source",
    [
        [
            "setting.pretrained.expert._target_=softmoe_torch.model.experts.MLPExpert",
            "++setting.pretrained.expert.hidden=5",
            "++setting.pretrained.checkpoint={tmp}/net.pt",
        ],
        ["++setting.pretrained.torchscript={tmp}/net.ts"],
    ],
    ids=["checkpoint", "torchscript"],
)
def test_frozen_network_as_pretrained_mean(tmp_path, task_a_net, source):
    overrides = [s.format(tmp=tmp_path) for s in source]
    setting = Setting(cfg(overrides).setting)
    model = setting.model()
    x = torch.randn(30, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.pretrained.mean(x), task_a_net(x))
    assert not any(p.requires_grad for p in model.pretrained.parameters())
    assert not any(k.startswith("pretrained") for k in model.trainable_parameters())
    before = {k: v.clone() for k, v in model.pretrained.state_dict().items()}
    X, Y = simulate(setting, 400, [0, 1])
    with pytest.warns(ConvergenceWarning, match="did not converge"):  # 30 iterations are enough here
        res = fit_batch(model, X, Y, random_start(model, Y, 0), FitOptions(method="direct", mstep="bfgs", max_iter=30))
    assert torch.isfinite(res.mean_loglik).all()
    for k, v in model.pretrained.state_dict().items():
        assert torch.equal(v, before[k])
    np.savez(tmp_path / "d.npz", X=X[0].numpy(), y=Y[0].numpy())
    assert (
        cli(
            "softmoe_torch.fit",
            f"data={tmp_path / 'd.npz'}",
            "setting=distinguishable",
            "fit=direct",
            *overrides,
            f"out={tmp_path / 'r.json'}",
            f"hydra.run.dir={tmp_path}",
        )
        == 0
    )


def test_one_prompt_is_the_papers_sigmoid_model():
    setting = Setting(cfg(["setting=distinguishable", "++setting.n_prompts=1"]).setting)
    model = setting.true_model(1000)
    x = torch.randn(50, 8, dtype=torch.float64)
    y = torch.tanh(x[:, 0]) + 0.05 * torch.randn(50, dtype=torch.float64)
    beta, tau, eta, nu = model.gate.beta[0], model.gate.tau[0], model.prompts[0].expert.eta, model.prompts[0].nu
    s = torch.sigmoid(x @ beta + tau)
    f0 = torch.distributions.Laplace(torch.tanh(x[:, 0]), (0.001 / 2) ** 0.5).log_prob(y).exp()
    f = torch.distributions.Normal(torch.tanh(x @ eta), nu.sqrt()).log_prob(y).exp()
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x, y), torch.log((1 - s) * f0 + s * f))


def test_two_prompts_em_never_lowers_the_likelihood(tmp_path):
    base = Setting(cfg(["setting=distinguishable"]).setting)
    X, Y = simulate(base, 400, [0, 1])
    two = Setting(cfg(["setting=distinguishable", "++setting.n_prompts=2"]).setting)
    model = two.model()
    assert len(model.prompts) == 2 and model.gate.beta.shape == (2, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        opts = FitOptions(method="em", max_iter=9)
        res = fit_batch(model, X, Y, random_start(model, Y, 1), opts)
    for trace in res.trace:
        assert len(trace) > 3 and bool((torch.diff(torch.tensor(trace)) >= -1e-10).all())
    np.savez(tmp_path / "d.npz", X=X[0].numpy(), y=Y[0].numpy())
    out = tmp_path / "r.json"
    assert (
        cli(
            "softmoe_torch.fit",
            f"data={tmp_path / 'd.npz'}",
            "setting=distinguishable",
            "++setting.n_prompts=2",
            "init=random",
            "init.n_init=1",
            "fit=direct",
            "fit.max_iter=20",
            f"out={out}",
            f"hydra.run.dir={tmp_path}",
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert (
        np.array(r["beta"]).shape == (2, 8)
        and np.array(r["eta"]).shape == (2, 8)
        and len(r["nu"]) == len(r["tau"]) == 2
    )


FIT_ERRORS = {
    "class not found": (["setting.prompt.expert._target_=no_such_module.Expert"], "No module named 'no_such_module'"),
    "attribute not found": (
        ["setting.prompt.expert._target_=softmoe_torch.model.experts.NoSuchExpert"],
        "Are you sure that 'NoSuchExpert' is importable",
    ),
    "wrong shape": (
        ["setting.prompt.expert._target_=bad_experts.Column"],
        "prompt expert 0 Column must map x of shape (16, 8) to means of shape (16,), got (16, 1)",
    ),
    "non-finite": (["setting.prompt.expert._target_=bad_experts.LogMean"], "LogMean returned non-finite means"),
    "not vmap-able": (["setting.prompt.expert._target_=bad_experts.Branchy"], "Branchy does not run under torch.vmap"),
    "pre-trained without values": (
        ["~setting.pretrained.params"],
        "the pre-trained expert TanhExpert has parameters (eta) but no known values",
    ),
    "checkpoint does not fit": (
        ["++setting.pretrained.checkpoint={tmp}/wrong.pt"],
        "cannot load the pre-trained expert checkpoint",
    ),
    "torchscript missing": (
        ["++setting.pretrained.torchscript={tmp}/none.ts"],
        "cannot load the pre-trained expert TorchScript",
    ),
    "student-t df": ([STUDENT_T[0], "++setting.prompt.density.df=2"], "StudentT needs df > 2"),
    "no truth for K=2": (["++setting.n_prompts=2", "init=near_truth"], "use init=random"),
    "init_eta for an MLP": (MLP, "init_eta sets prompts.0.expert.eta, which this model does not have"),
}


@pytest.mark.parametrize("case", list(FIT_ERRORS))
def test_plugin_mistakes_are_one_line_errors_in_fit(tmp_path, user_dir, capsys, case):
    overrides, message = FIT_ERRORS[case]
    torch.save({"eta": torch.ones(3)}, tmp_path / "wrong.pt")
    np.savez(
        tmp_path / "d.npz", X=np.random.default_rng(0).standard_normal((40, 8)), y=np.zeros(40), init_eta=np.ones(8)
    )
    code = cli(
        "softmoe_torch.fit",
        f"data={tmp_path / 'd.npz'}",
        "setting=distinguishable",
        *[o.format(tmp=tmp_path) for o in overrides],
        f"hydra.run.dir={tmp_path}",
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["setting.prompt.expert._target_=no_such_module.Expert"], "No module named 'no_such_module'"),
        (["setting.prompt.expert._target_=bad_experts.Column"], "must map x of shape (16, 8) to means of shape (16,)"),
    ],
)
def test_plugin_mistakes_are_one_line_errors_in_run(tmp_path, user_dir, capsys, overrides, message):
    code = cli(
        "softmoe_torch.run",
        "sweep=tiny",
        *overrides,
        "progress=false",
        "monitor.tensorboard=false",
        f"hydra.run.dir={tmp_path}",
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_hand_built_mixture_rejects_a_trainable_pretrained_component():
    pre = Component(TanhExpert(3), Gaussian(), nu=0.1, frozen=True)
    pre.expert.eta.requires_grad_(True)
    with pytest.raises(ValueError, match="must be frozen"):
        ContaminatedMoE(pre, Component(TanhExpert(3), Gaussian()), SoftmaxGate(3))


@pytest.mark.slow
def test_frozen_network_demo_runs_in_under_a_minute(tmp_path):
    start = time.perf_counter()
    demo = ROOT / "experiments" / "examples" / "frozen_network_demo.py"
    proc = subprocess.run(
        [sys.executable, str(demo), "--plot", str(tmp_path / "d.png")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert time.perf_counter() - start < 60 and (tmp_path / "d.png").is_file()
    rows = [line.split()[3:] for line in proc.stdout.splitlines() if line.startswith("against the truth:")]
    assert len(rows) == 4 and {r[0] for r in rows} == {"prompts.0.nu", "prompts.0.expert.eta", "gate.beta", "gate.tau"}
    for _, est, se, truth in rows:  # every estimate within 4 standard errors of the truth
        assert abs(float(est) - float(truth)) < 4 * float(se)
