"""Tests for the numpy/scipy EM baseline in experiments/benchmarks/baseline_scipy.py."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import check_grad

_PATH = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "baseline_scipy.py"
_spec = importlib.util.spec_from_file_location("baseline_scipy", _PATH)
bs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bs)

D = 8
TAU, NU = 1.0, 1e-3
BETA = np.ones(D) / np.sqrt(D)
ETA0 = np.eye(D)[0]
ETA = -np.eye(D)[0]


def _simulate(n, seed):
    """Draw (X (n, D), y (n,)) from the distinguishable Laplace-f0 setting."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, D))
    s = 1.0 / (1.0 + np.exp(-(X @ BETA + TAU)))
    prompt = rng.random(n) < s
    y = np.where(
        prompt,
        np.tanh(X @ ETA) + np.sqrt(NU) * rng.standard_normal(n),
        np.tanh(X @ ETA0) + rng.laplace(scale=np.sqrt(NU / 2.0), size=n),
    )
    return X, y


def _init(seed):
    """Truth plus a 0.1-scale perturbation."""
    rng = np.random.default_rng(seed)
    return dict(
        beta=BETA + 0.1 * rng.standard_normal(D),
        tau=TAU + 0.1 * rng.standard_normal(),
        eta=ETA + 0.1 * rng.standard_normal(D),
        nu=NU * np.exp(0.1 * rng.standard_normal()),
    )


def test_mstep_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    n, d = 50, 4
    X = rng.standard_normal((n, d))
    y = rng.standard_normal(n)
    r = rng.random(n)
    theta = rng.standard_normal(2 * d + 2) * 0.5

    def f(t):
        return bs._neg_q(t, X, y, r)[0]

    def g(t):
        return bs._neg_q(t, X, y, r)[1]

    assert check_grad(f, g, theta) / np.linalg.norm(g(theta)) < 1e-5


def test_em_trace_is_nondecreasing():
    X, y = _simulate(2000, seed=1)
    fit = bs.fit_em_scipy(X, y, eta0=ETA0, nu0=NU, f0="laplace", init=_init(2))
    trace = np.asarray(fit["trace"])
    assert len(trace) == fit["n_iter"] + 1
    assert np.all(np.diff(trace) >= -1e-10)
    assert fit["mean_loglik"] == trace[-1]
    final = bs.mean_loglik(
        X, y, beta=fit["beta"], tau=fit["tau"], eta=fit["eta"], nu=fit["nu"], eta0=ETA0, nu0=NU, f0="laplace"
    )
    assert np.isclose(final, fit["mean_loglik"], rtol=0, atol=1e-12)


def test_em_recovers_truth():
    X, y = _simulate(20000, seed=3)
    fit = bs.fit_em_scipy(X, y, eta0=ETA0, nu0=NU, f0="laplace", init=_init(4))
    assert fit["converged"]
    assert np.linalg.norm(fit["eta"] - ETA) < 0.05
    assert abs(fit["tau"] - TAU) < 0.2


def _torch_mean_loglik(theta, X, y, log_f0):
    """The mean marginal log-likelihood in theta = (beta, tau, eta, log nu), written
    independently in torch (float64) for autograd."""
    d = X.shape[1]
    beta, tau, eta, log_nu = theta[:d], theta[d], theta[d + 1 : 2 * d + 1], theta[2 * d + 1]
    a = X @ beta + tau
    m = torch.tanh(X @ eta)
    log_n1 = -0.5 * (np.log(2 * np.pi) + log_nu) - (y - m) ** 2 / (2 * torch.exp(log_nu))
    log_p = torch.logaddexp(torch.nn.functional.logsigmoid(-a) + log_f0, torch.nn.functional.logsigmoid(a) + log_n1)
    return log_p.mean()


@pytest.mark.parametrize("f0", ["gaussian", "laplace"])
def test_peer_gradient_and_hessian_match_autograd(f0):
    rng = np.random.default_rng(5)
    n, d = 300, 3
    X = rng.standard_normal((n, d))
    eta0 = rng.standard_normal(d)
    # overlapping components (nu = 0.05), so responsibilities are spread over (0, 1)
    y = np.tanh(X @ eta0) + 0.3 * rng.standard_normal(n)
    theta = np.concatenate([0.5 * rng.standard_normal(d + 1), eta0 + 0.3 * rng.standard_normal(d), [np.log(0.05)]])
    log_f0 = bs._LOG_F0[f0](y, np.tanh(X @ eta0), 0.05)
    p = bs._derivatives(theta, X, y, log_f0)
    assert 0.05 < p["r"].mean() < 0.95

    args = [torch.from_numpy(v) for v in (X, y, log_f0)]
    t = torch.from_numpy(theta)
    value = _torch_mean_loglik(t, *args).item()
    grad = torch.autograd.functional.jacobian(lambda u: _torch_mean_loglik(u, *args), t).numpy()
    hess = torch.autograd.functional.hessian(lambda u: _torch_mean_loglik(u, *args), t).numpy()
    assert np.isclose(p["log_p"].mean(), value, rtol=1e-13, atol=0)
    assert np.allclose(bs._gradient(X, p), grad, rtol=0, atol=1e-12 * np.abs(grad).max())
    H = bs._hessian(X, p)
    assert np.allclose(H, hess, rtol=0, atol=1e-12 * np.abs(hess).max())


def test_ascent_direction():
    rng = np.random.default_rng(6)
    A = rng.standard_normal((5, 5))
    g = rng.standard_normal(5)
    H = -(A @ A.T + np.eye(5))  # negative definite: the plain Newton step
    step, shifted = bs._ascent_direction(H, g)
    assert not shifted
    assert np.allclose(step, np.linalg.solve(-H, g), rtol=1e-12, atol=0)
    H[0, 0] = 50.0  # indefinite: a shifted step that still ascends
    step, shifted = bs._ascent_direction(H, g)
    assert shifted
    lam_min = np.linalg.eigvalsh(-H)[0]
    assert lam_min < 0
    assert g @ step > 0
    # every eigenvalue of -H + shift I is at least |lam_min|, which bounds the step
    assert np.linalg.norm(step) <= np.linalg.norm(g) / abs(lam_min)


def test_peers_reach_the_em_optimum():
    X, y = _simulate(3000, seed=1)
    model = dict(eta0=ETA0, nu0=NU, f0="laplace", init=_init(2))
    em = bs.fit_em_scipy(X, y, **model, tol=1e-12)
    bfgs = bs.fit_direct_bfgs(X, y, **model)
    newton = bs.fit_newton(X, y, **model)
    assert em["converged"] and bfgs["converged"] and newton["converged"]

    init_ll = bs.mean_loglik(X, y, **model["init"], eta0=ETA0, nu0=NU, f0="laplace")
    for fit in (bfgs, newton):
        assert np.isclose(fit["trace"][0], init_ll, rtol=0, atol=1e-14)
        assert len(fit["trace"]) == fit["n_iter"] + 1
        at_estimates = bs.mean_loglik(
            X, y, beta=fit["beta"], tau=fit["tau"], eta=fit["eta"], nu=fit["nu"], eta0=ETA0, nu0=NU, f0="laplace"
        )
        assert np.isclose(fit["mean_loglik"], at_estimates, rtol=0, atol=1e-14)
        # same optimum as EM: not below it (up to rounding), and no more than 1e-10 above
        assert -1e-12 <= fit["mean_loglik"] - em["mean_loglik"] < 1e-10
    assert np.all(np.diff(newton["trace"]) > 0)
    for key in ("beta", "eta"):
        assert np.allclose(bfgs[key], newton[key], rtol=0, atol=1e-6)
    assert np.isclose(bfgs["tau"], newton["tau"], rtol=0, atol=1e-6)
    assert np.isclose(bfgs["nu"], newton["nu"], rtol=1e-6, atol=0)

    # this start has a Hessian that is not negative definite: shifted steps are taken
    assert newton["n_shifted"] > 0
    assert newton["n_hev"] == newton["n_iter"]
    assert 3 * newton["n_iter"] <= bfgs["n_iter"]
    assert 3 * newton["n_fev"] <= bfgs["n_fev"]
    assert 10 * newton["n_fev"] <= em["n_fev"]


def test_newton_stopping_rules():
    X, y = _simulate(2000, seed=1)
    model = dict(eta0=ETA0, nu0=NU, f0="laplace", init=_init(2))
    default = bs.fit_newton(X, y, **model)
    short = bs.fit_newton(X, y, **model, max_iter=2)
    assert not short["converged"]
    assert short["n_iter"] == 2
    assert short["trace"][-1] > short["trace"][0]
    # without the gradient rule it stops on the predicted gain: one Hessian more than steps
    by_gain = bs.fit_newton(X, y, **model, gtol=0.0)
    assert by_gain["converged"]
    assert by_gain["n_hev"] == by_gain["n_iter"] + 1
    # without either rule it steps until the line search finds no ascent left
    stalled = bs.fit_newton(X, y, **model, gtol=0.0, ftol=0.0)
    assert not stalled["converged"]
    assert stalled["n_iter"] < 200
    for fit in (by_gain, stalled):
        assert abs(fit["mean_loglik"] - default["mean_loglik"]) < 1e-14
