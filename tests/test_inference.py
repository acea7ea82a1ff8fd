"""Inference at the MLE: loading estimates, the observed information, standard errors, Wald
interval coverage over replications, AIC and BIC."""

import json
import math
import runpy
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from softmoe_torch import Component, ContaminatedMoE, Estimator, FitResults, Gaussian, SoftmaxGate, TanhExpert
from softmoe_torch.estimation.inference import load_params, observed_information
from softmoe_torch.settings.setting import Setting
from softmoe_torch.study.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setting():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return Setting(compose(config_name="config", overrides=["setting=distinguishable"]).setting)


def fitted(setting, n, R, seed):
    """R fits by Newton from near the truth: (X, Y, FitResults, truth)."""
    X, Y = simulate(setting, n, range(R), seed=seed)
    truth = setting.truth(n)
    res = Estimator(setting.model(), "newton", init="near_truth", truth=truth, seed=seed + 1).fit(X, Y)
    assert isinstance(res, FitResults) and bool(res.converged.all())
    return X, Y, res, truth


def coverage(setting, X, Y, res, truth):
    """Per scalar parameter: the share of replications whose 95% interval holds the truth, (p,)."""
    hits = []
    for r in range(len(res)):
        ci = res.conf_int(0.05, r)
        hits.append(torch.cat([((ci[k][0] <= truth[k]) & (truth[k] <= ci[k][1])).reshape(-1) for k in truth]))
    return torch.stack(hits).double().mean(0)


def test_load_params_copies_one_replication(setting):
    model = setting.model()
    params = {k: torch.stack([v, v + 1]) for k, v in setting.truth(1000).items()}
    load_params(model, params, r=1)
    for k, v in params.items():
        torch.testing.assert_close(model.get_parameter(k).detach(), v[1])
    with pytest.raises(ValueError, match="unknown parameters"):
        load_params(model, {"gate.nope": torch.zeros(1)})


def test_information_is_minus_the_hessian_by_finite_differences(setting):
    model = setting.true_model(300)
    X, Y = simulate(setting, 300, [0])
    info = observed_information(model, X[0], Y[0])
    theta = torch.cat([p.detach().reshape(-1) for p in model.trainable_parameters().values()])
    names = list(model.trainable_parameters())

    def grad(t):
        t = t.clone().requires_grad_(True)
        values, start = {}, 0
        for name in names:
            p = model.get_parameter(name)
            values[name] = t[start : start + p.numel()].reshape(p.shape)
            start += p.numel()
        ll = torch.func.functional_call(model, values, (X[0], Y[0])).sum()
        return torch.autograd.grad(ll, t)[0]

    h = 1e-6 * theta.abs().clamp(min=1e-3)
    eye = torch.eye(len(theta), dtype=theta.dtype)
    fd = torch.stack([(grad(theta + h[i] * e) - grad(theta - h[i] * e)) / (2 * h[i]) for i, e in enumerate(eye)])
    torch.testing.assert_close(info, -(fd + fd.T) / 2, rtol=1e-4, atol=1e-4 * float(info.abs().max()))


def test_aic_bic_and_interval_width(setting):
    X, Y, res, _ = fitted(setting, 1000, 1, seed=5)
    p = 8 + 1 + 8 + 1
    loglik = float(res.model().log_prob(X[0], Y[0]).sum())
    assert res.n_params == p and float(res.loglik[0]) == pytest.approx(loglik, rel=1e-12)
    assert float(res.aic[0]) == pytest.approx(2 * p - 2 * loglik)
    assert float(res.bic[0]) == pytest.approx(p * math.log(1000) - 2 * loglik)
    est, se, ci = res.estimates(), res.se(), res.conf_int()
    for k in est:
        torch.testing.assert_close(ci[k][1] - est[k], 1.959964 * se[k])
    flat = torch.cat([v.reshape(-1) for v in se.values()])
    torch.testing.assert_close(flat, res.covariance().diagonal().sqrt())


def test_singular_information_gives_nan_with_a_warning():
    class Idle(TanhExpert):
        """tanh(eta^T x) with a parameter the likelihood ignores."""

        def __init__(self, dim):
            super().__init__(dim)
            self.idle = nn.Parameter(torch.zeros(1))

    pre = Component(TanhExpert(2), Gaussian(), nu=0.1, frozen=True)
    model = ContaminatedMoE(pre, Component(Idle(2), Gaussian(), nu=0.2), SoftmaxGate(2)).double()
    x = torch.randn(100, 2, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = Estimator(model, "direct", n_init=1, max_iter=20).fit(x, torch.randn(100, dtype=torch.float64))
    with pytest.warns(RuntimeWarning, match="not positive definite"):
        se = res.se()
    assert all(bool(v.isnan().all()) for v in se.values())


def test_fit_json_reports_the_same_inference(setting, tmp_path):
    X, Y = simulate(setting, 800, [0], seed=9)
    np.savez(tmp_path / "d.npz", X=X[0].numpy(), y=Y[0].numpy())
    out = tmp_path / "r.json"
    argv, sys.argv = (
        sys.argv,
        [
            "softmoe_torch.fit",
            f"data={tmp_path / 'd.npz'}",
            "setting=distinguishable",
            "fit=direct",
            f"out={out}",
            f"hydra.run.dir={tmp_path}",
        ],
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runpy.run_module("softmoe_torch.fit", run_name="__main__", alter_sys=True)
    finally:
        sys.argv = argv
    r = json.loads(out.read_text())
    params = {
        "gate.beta": torch.tensor([[r["beta"]]]),
        "gate.tau": torch.tensor([[r["tau"]]]),
        "prompts.0.expert.eta": torch.tensor([r["eta"]]),
        "prompts.0.nu": torch.tensor([r["nu"]]),
    }
    model = load_params(setting.model(), params)
    cov = torch.linalg.inv(observed_information(model, X[0], Y[0]))
    se = cov.diagonal().sqrt()
    names = list(model.trainable_parameters())
    eta = names.index("prompts.0.expert.eta")  # eta comes first among the flattened entries after nu
    offset = sum(model.get_parameter(n).numel() for n in names[:eta])
    np.testing.assert_allclose(r["se"]["eta"], se[offset : offset + 8], rtol=1e-5)
    loglik = float(model.log_prob(X[0], Y[0]).sum())
    assert r["bic"] == pytest.approx(18 * math.log(800) - 2 * loglik) and r["n_params"] == 18


def test_wald_intervals_cover_the_truth_fast(setting):
    """12 replications x 18 scalars. Pooled: 216 intervals, binomial sd 0.015 at 95%: bound at
    about nominal - 4 sd (replications shift several intervals at once, so not tighter). Each
    scalar: at most 4 misses of 12 (P(>= 5 misses) = 2e-4 per scalar at the nominal rate)."""
    cov = coverage(setting, *fitted(setting, 1000, 12, seed=11))
    assert 0.88 <= float(cov.mean()) <= 1.0, cov
    assert bool((cov >= 8 / 12).all()), cov


def test_wald_intervals_cover_the_truth_at_the_nominal_rate(setting):
    """40 replications at n = 2000. Each scalar: coverage >= 0.8, i.e. at most 8 misses of 40
    (nominal - 4.4 binomial sd; P(>= 9 misses) = 1.3e-4 per scalar, 2e-3 for all 18). Pooled
    over 720 intervals (sd 0.008): within [0.90, 0.99]. Standard errors match the spread of the
    estimates over replications: the mean ratio within 15% (each ratio has sd about 11%)."""
    X, Y, res, truth = fitted(setting, 2000, 40, seed=21)
    cov = coverage(setting, X, Y, res, truth)
    assert bool((cov >= 0.8).all()), cov
    assert 0.90 <= float(cov.mean()) <= 0.99, cov
    se = torch.stack([torch.cat([v.reshape(-1) for v in res.se(r).values()]) for r in range(40)])
    spread = torch.cat([v.reshape(40, -1) for v in res.params.values()], dim=1).std(0)
    assert 0.85 <= float((se.mean(0) / spread).mean()) <= 1.15
