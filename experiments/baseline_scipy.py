"""Reference EM baseline (the paper's method) in pure numpy/scipy.

Softmax-contaminated mixture of experts with two components::

    p(y|x) = (1 - s(x)) f0(y | tanh(eta0 . x), nu0) + s(x) N(y | tanh(eta . x), nu)
    s(x)   = sigmoid(beta . x + tau)

``eta0`` and ``nu0`` are fixed and known; ``f0`` is ``"gaussian"`` or ``"laplace"``
(the Laplace density is parametrised by mean and *variance*, scale ``sqrt(v / 2)``).
The unknowns ``(beta, tau, eta, nu)`` are estimated by EM (Jordan & Jacobs): the
E-step computes responsibilities in log space and the M-step maximises the expected
complete-data log-likelihood jointly over ``(beta, tau, eta, log nu)`` with one BFGS
call using hand-written gradients. Used by the benchmarks as the speed reference.
"""

import time

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_expit

_LOG_2PI = np.log(2.0 * np.pi)


def _log_gaussian(y, mean, var):
    """Elementwise log N(y | mean, var); y, mean (n,), var scalar -> (n,)."""
    return -0.5 * (_LOG_2PI + np.log(var)) - (y - mean) ** 2 / (2.0 * var)


def _log_laplace(y, mean, var):
    """Elementwise log Laplace(y | mean, variance var); y, mean (n,) -> (n,)."""
    b = np.sqrt(var / 2.0)
    return -np.abs(y - mean) / b - np.log(2.0 * b)


_LOG_F0 = {"gaussian": _log_gaussian, "laplace": _log_laplace}


def _e_step(X, y, beta, tau, eta, nu, log_f0):
    """Responsibilities of the prompt component and the mean log-likelihood.

    X (n, d), y (n,), beta (d,), tau float, eta (d,), nu float, log_f0 (n,)
    (log density of the fixed component). Returns (r (n,), mean_loglik float).
    """
    z = X @ beta + tau
    log_prompt = log_expit(z) + _log_gaussian(y, np.tanh(X @ eta), nu)
    log_p = np.logaddexp(log_expit(-z) + log_f0, log_prompt)
    return np.exp(log_prompt - log_p), float(np.mean(log_p))


def _unpack(theta, d):
    """Split theta (2d + 2,) = (beta, tau, eta, log nu) into its parts."""
    return theta[:d], theta[d], theta[d + 1 : 2 * d + 1], theta[2 * d + 1]


def _with_nu(theta, d):
    """(beta, tau, eta, nu) from theta (2d + 2,), exponentiating log nu."""
    beta, tau, eta, log_nu = _unpack(theta, d)
    return beta, tau, eta, np.exp(log_nu)


def _neg_q(theta, X, y, r):
    """Negative M-step objective -Q and its analytic gradient.

    theta (2d + 2,) = (beta, tau, eta, log nu); X (n, d), y (n,), r (n,).
    Returns (-Q float, -dQ/dtheta (2d + 2,)).
    """
    n, d = X.shape
    beta, tau, eta, log_nu = _unpack(theta, d)
    nu = np.exp(log_nu)
    z = X @ beta + tau
    m = np.tanh(X @ eta)
    resid = y - m
    q = (
        r * log_expit(z)
        + (1.0 - r) * log_expit(-z)
        + r * (-0.5 * (_LOG_2PI + log_nu) - resid**2 / (2.0 * nu))
    ).mean()
    dz = r - np.exp(log_expit(z))  # dQ/dz per sample (times n)
    du = r * resid / nu * (1.0 - m**2)  # dQ/d(eta . x) per sample (times n)
    grad = np.concatenate(
        [
            X.T @ dz / n,
            [dz.mean()],
            X.T @ du / n,
            [np.mean(r * (resid**2 / (2.0 * nu) - 0.5))],
        ]
    )
    return -q, -grad


def mean_loglik(X, y, *, beta, tau, eta, nu, eta0, nu0, f0="laplace"):
    """Mean (natural) log-likelihood over samples; X (n, d), y (n,), vectors (d,)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    log_f0 = _LOG_F0[f0](y, np.tanh(X @ np.asarray(eta0, float)), nu0)
    beta, eta = np.asarray(beta, float), np.asarray(eta, float)
    return _e_step(X, y, beta, float(tau), eta, float(nu), log_f0)[1]


def fit_em_scipy(X, y, *, eta0, nu0, f0="laplace", init, tol=1e-8, max_iter=1000, gtol=1e-8):
    """Fit (beta, tau, eta, nu) by EM with a BFGS M-step.

    X (n, d) float64, y (n,), eta0 (d,), nu0 float; init: dict with beta (d,),
    tau float, eta (d,), nu float. Stops when the mean log-likelihood changes by
    less than ``tol`` or after ``max_iter`` EM iterations.

    Returns dict(beta (d,), tau, eta (d,), nu, mean_loglik (at the final
    parameters), n_iter (M-steps done), converged, seconds (wall time),
    trace (mean log-likelihood at init and after each iteration)).
    """
    start = time.perf_counter()
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    d = X.shape[1]
    log_f0 = _LOG_F0[f0](y, np.tanh(X @ np.asarray(eta0, float)), nu0)
    theta = np.concatenate(
        [init["beta"], [init["tau"]], init["eta"], [np.log(init["nu"])]]
    ).astype(np.float64)

    r, ll = _e_step(X, y, *_with_nu(theta, d), log_f0)
    trace = [ll]
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        res = minimize(_neg_q, theta, args=(X, y, r), jac=True, method="BFGS",
                       options={"gtol": gtol})
        theta = res.x
        r, ll_new = _e_step(X, y, *_with_nu(theta, d), log_f0)
        trace.append(ll_new)
        if abs(ll_new - ll) < tol:
            converged = True
            break
        ll = ll_new

    beta, tau, eta, log_nu = _unpack(theta, d)
    return dict(
        beta=beta.copy(), tau=float(tau), eta=eta.copy(), nu=float(np.exp(log_nu)),
        mean_loglik=trace[-1], n_iter=n_iter, converged=converged,
        seconds=time.perf_counter() - start, trace=trace,
    )
