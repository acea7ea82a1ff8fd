"""Tests for the numpy/scipy EM baseline in experiments/baseline_scipy.py."""

import importlib.util
from pathlib import Path

import numpy as np
from scipy.optimize import check_grad

_PATH = Path(__file__).resolve().parents[1] / "experiments" / "baseline_scipy.py"
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
    f = lambda t: bs._neg_q(t, X, y, r)[0]
    g = lambda t: bs._neg_q(t, X, y, r)[1]
    assert check_grad(f, g, theta) / np.linalg.norm(g(theta)) < 1e-5


def test_em_trace_is_nondecreasing():
    X, y = _simulate(2000, seed=1)
    fit = bs.fit_em_scipy(X, y, eta0=ETA0, nu0=NU, f0="laplace", init=_init(2))
    trace = np.asarray(fit["trace"])
    assert len(trace) == fit["n_iter"] + 1
    assert np.all(np.diff(trace) >= -1e-10)
    assert fit["mean_loglik"] == trace[-1]
    final = bs.mean_loglik(X, y, beta=fit["beta"], tau=fit["tau"], eta=fit["eta"],
                           nu=fit["nu"], eta0=ETA0, nu0=NU, f0="laplace")
    assert np.isclose(final, fit["mean_loglik"], rtol=0, atol=1e-12)


def test_em_recovers_truth():
    X, y = _simulate(20000, seed=3)
    fit = bs.fit_em_scipy(X, y, eta0=ETA0, nu0=NU, f0="laplace", init=_init(4))
    assert fit["converged"]
    assert np.linalg.norm(fit["eta"] - ETA) < 0.05
    assert abs(fit["tau"] - TAU) < 0.2
