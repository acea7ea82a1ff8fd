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

Two peers maximise the marginal log-likelihood itself in ``theta = (beta, tau, eta, log nu)``
from the same inputs and return the same record: ``fit_direct_bfgs`` (scipy BFGS with the
analytic gradient) and ``fit_newton`` (Newton's method with the exact analytic Hessian).
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


def _log_joint(X, y, beta, tau, eta, nu, log_f0):
    """Per-sample log joint densities of the two components and of y.

    X (n, d), y (n,), beta (d,), tau float, eta (d,), nu float, log_f0 (n,)
    (log density of the fixed component). Returns (z, m, log_fixed, log_prompt,
    log_p), all (n,): gate logit z = beta . x + tau, prompt mean m = tanh(eta . x),
    log((1 - s) f0), log(s N(y | m, nu)) and log p(y | x).
    """
    z = X @ beta + tau
    m = np.tanh(X @ eta)
    log_fixed = log_expit(-z) + log_f0
    log_prompt = log_expit(z) + _log_gaussian(y, m, nu)
    return z, m, log_fixed, log_prompt, np.logaddexp(log_fixed, log_prompt)


def _e_step(X, y, beta, tau, eta, nu, log_f0):
    """Responsibilities of the prompt component and the mean log-likelihood.

    Arguments as in ``_log_joint``. Returns (r (n,), mean_loglik float).
    """
    *_, log_prompt, log_p = _log_joint(X, y, beta, tau, eta, nu, log_f0)
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
    q = (r * log_expit(z) + (1.0 - r) * log_expit(-z) + r * (-0.5 * (_LOG_2PI + log_nu) - resid**2 / (2.0 * nu))).mean()
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


def _prepare(X, y, eta0, nu0, f0, init):
    """Common set-up of the fits: float64 X (n, d) and y (n,), log_f0 (n,) and the
    start theta (2d + 2,) = (beta, tau, eta, log nu) from the init dict."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    log_f0 = _LOG_F0[f0](y, np.tanh(X @ np.asarray(eta0, float)), nu0)
    theta = np.concatenate([init["beta"], [init["tau"]], init["eta"], [np.log(init["nu"])]]).astype(np.float64)
    return X, y, log_f0, theta


def _record(theta, d, trace, start, **counts):
    """The fits' common result dict: estimates from theta (2d + 2,), mean_loglik =
    trace[-1], the trace, wall seconds since ``start`` and the given counts/flags."""
    beta, tau, eta, log_nu = _unpack(theta, d)
    return dict(
        beta=beta.copy(),
        tau=float(tau),
        eta=eta.copy(),
        nu=float(np.exp(log_nu)),
        mean_loglik=trace[-1],
        **counts,
        seconds=time.perf_counter() - start,
        trace=trace,
    )


def fit_em_scipy(X, y, *, eta0, nu0, f0="laplace", init, tol=1e-8, max_iter=1000, gtol=1e-8):
    """Fit (beta, tau, eta, nu) by EM with a BFGS M-step.

    X (n, d) float64, y (n,), eta0 (d,), nu0 float; init: dict with beta (d,),
    tau float, eta (d,), nu float. Stops when the mean log-likelihood changes by
    less than ``tol`` or after ``max_iter`` EM iterations.

    Returns dict(beta (d,), tau, eta (d,), nu, mean_loglik (at the final
    parameters), n_iter (M-steps done), n_fev (evaluations of -Q and its gradient,
    summed over the M-steps; the n_iter + 1 E-steps come on top), converged,
    seconds (wall time), trace (mean log-likelihood at init and after each iteration)).
    """
    start = time.perf_counter()
    X, y, log_f0, theta = _prepare(X, y, eta0, nu0, f0, init)
    d = X.shape[1]
    r, ll = _e_step(X, y, *_with_nu(theta, d), log_f0)
    trace = [ll]
    converged = False
    n_iter = n_fev = 0
    for n_iter in range(1, max_iter + 1):
        res = minimize(_neg_q, theta, args=(X, y, r), jac=True, method="BFGS", options={"gtol": gtol})
        theta = res.x
        n_fev += res.nfev
        r, ll_new = _e_step(X, y, *_with_nu(theta, d), log_f0)
        trace.append(ll_new)
        if abs(ll_new - ll) < tol:
            converged = True
            break
        ll = ll_new

    return _record(theta, d, trace, start, n_iter=n_iter, n_fev=n_fev, converged=converged)


# ------------------------------------------------ peers: direct maximisation of the likelihood
# Per sample, with gate logit a, L1 = log N(y | m, nu), m = tanh(u), u = eta . x, lam = log nu,
# l = log((1 - s) f0 + s e^L1) has dl/da = r - s and dl/dL1 = r (r the prompt's
# responsibility), and d2l/da2 = r(1-r) - s(1-s), d2l/da dL1 = d2l/dL12 = r(1-r).


def _derivatives(theta, X, y, log_f0):
    """Per-sample pieces of the marginal log-likelihood at theta (2d + 2,).

    X (n, d), y (n,), log_f0 (n,). Returns dict of (n,) arrays: log_p (log p(y | x)),
    r, one_minus_r (prompt responsibility and its complement, each from log space),
    s_var (s(1 - s)), g_a (dl/da), L1_u, L1_lam (first derivatives of L1 in u, lam),
    L1_uu (second derivative in u), resid (y - m) and nu (float).
    """
    d = X.shape[1]
    beta, tau, eta, nu = _with_nu(theta, d)
    z, m, log_fixed, log_prompt, log_p = _log_joint(X, y, beta, tau, eta, nu, log_f0)
    r = np.exp(log_prompt - log_p)
    s = np.exp(log_expit(z))
    resid = y - m
    dm = 1.0 - m**2  # h'(u); h''(u) = -2 m h'(u)
    return dict(
        log_p=log_p,
        r=r,
        one_minus_r=np.exp(log_fixed - log_p),
        s_var=s * np.exp(log_expit(-z)),
        g_a=r - s,
        L1_u=resid * dm / nu,
        L1_lam=resid**2 / (2.0 * nu) - 0.5,
        L1_uu=-(dm**2 + 2.0 * m * dm * resid) / nu,
        resid=resid,
        nu=nu,
    )


def _gradient(X, p):
    """Gradient (2d + 2,) of the mean log-likelihood in (beta, tau, eta, log nu);
    X (n, d), p from ``_derivatives``."""
    n = X.shape[0]
    return np.concatenate(
        [X.T @ p["g_a"] / n, [p["g_a"].mean()], X.T @ (p["r"] * p["L1_u"]) / n, [np.mean(p["r"] * p["L1_lam"])]]
    )


def _hessian(X, p):
    """Hessian (2d + 2, 2d + 2) of the mean log-likelihood in (beta, tau, eta, log nu).

    X (n, d), p from ``_derivatives``. Per sample, the chain rule through L1(u, lam)
    with d2L1/du dlam = -dL1/du and d2L1/dlam2 = -(y - m)^2 / (2 nu) gives weights on
    (a, u, lam); each block is a Gram matrix X~^T diag(w) X~ with X~ = [X, 1] (gate)
    or X (expert), averaged over samples.
    """
    n, d = X.shape
    r, w = p["r"], p["r"] * p["one_minus_r"]  # w = r(1 - r) = d2l/da dL1 = d2l/dL1^2
    L1_u, L1_lam = p["L1_u"], p["L1_lam"]
    h_aa = w - p["s_var"]
    h_au, h_alam = w * L1_u, w * L1_lam
    h_uu = w * L1_u**2 + r * p["L1_uu"]
    h_ulam = w * L1_u * L1_lam - r * L1_u
    h_lamlam = w * L1_lam**2 - r * p["resid"] ** 2 / (2.0 * p["nu"])
    X1 = np.column_stack([X, np.ones(n)])
    H = np.empty((2 * d + 2, 2 * d + 2))
    gate, expert, lam = slice(0, d + 1), slice(d + 1, 2 * d + 1), 2 * d + 1
    H[gate, gate] = X1.T @ (h_aa[:, None] * X1) / n
    H[gate, expert] = X1.T @ (h_au[:, None] * X) / n
    H[gate, lam] = X1.T @ h_alam / n
    H[expert, expert] = X.T @ (h_uu[:, None] * X) / n
    H[expert, lam] = X.T @ h_ulam / n
    H[lam, lam] = h_lamlam.mean()
    H[expert, gate] = H[gate, expert].T
    H[lam, : 2 * d + 1] = H[: 2 * d + 1, lam]
    return H


def fit_direct_bfgs(X, y, *, eta0, nu0, f0="laplace", init, gtol=1e-8, max_iter=5000):
    """Fit (beta, tau, eta, nu) by scipy BFGS on minus the mean marginal log-likelihood
    in (beta, tau, eta, log nu) with its analytic gradient.

    X (n, d) float64, y (n,), eta0 (d,), nu0 float; init: dict with beta (d,),
    tau float, eta (d,), nu float. ``gtol`` bounds the largest |gradient| entry at a
    successful stop; at most ``max_iter`` BFGS iterations.

    Returns dict(beta (d,), tau, eta (d,), nu, mean_loglik (at the final parameters),
    n_iter (BFGS iterations), n_fev (value + gradient evaluations), converged (scipy's
    success flag), message (scipy's), seconds (wall time), trace (mean log-likelihood
    at init and after each iteration)).
    """
    start = time.perf_counter()
    X, y, log_f0, theta = _prepare(X, y, eta0, nu0, f0, init)
    values = []

    def neg_loglik(t):
        p = _derivatives(t, X, y, log_f0)
        values.append(float(np.mean(p["log_p"])))
        return -values[-1], -_gradient(X, p)

    trace = []
    res = minimize(
        neg_loglik,
        theta,
        jac=True,
        method="BFGS",
        callback=lambda intermediate_result: trace.append(-intermediate_result.fun),
        options={"gtol": gtol, "maxiter": max_iter},
    )
    return _record(
        res.x,
        X.shape[1],
        [values[0], *trace],
        start,
        n_iter=res.nit,
        n_fev=res.nfev,
        converged=bool(res.success),
        message=res.message,
    )


def _ascent_direction(H, g):
    """Newton direction p = (-H + shift I)^{-1} g for Hessian H (k, k), gradient g (k,).

    shift = 0 when -H is positive definite (smallest eigenvalue lam_min above 1e-10
    times the largest |eigenvalue|, scale); otherwise shift = 2 |lam_min| + 1e-8 scale,
    so that the smallest eigenvalue of -H + shift I is about |lam_min|.
    Returns (p (k,), shifted bool).
    """
    lam, V = np.linalg.eigh(-H)
    scale = np.abs(lam).max()
    shifted = bool(lam[0] <= 1e-10 * scale)
    shift = 2.0 * abs(lam[0]) + 1e-8 * scale if shifted else 0.0
    return V @ ((V.T @ g) / (lam + shift)), shifted


def fit_newton(X, y, *, eta0, nu0, f0="laplace", init, gtol=1e-10, ftol=1e-14, max_iter=200):
    """Fit (beta, tau, eta, nu) by Newton's method on the mean marginal log-likelihood
    in (beta, tau, eta, log nu), with its exact analytic gradient and Hessian.

    X (n, d) float64, y (n,), eta0 (d,), nu0 float; init: dict with beta (d,),
    tau float, eta (d,), nu float. Each iteration takes the Newton step (a shifted
    one, see ``_ascent_direction``, where the Hessian is not negative definite) with
    a backtracking (Armijo) line search. Converged when the largest |gradient| entry
    is below ``gtol``, or when an unshifted Newton step predicts a gain g . p / 2 of
    the mean log-likelihood below ``ftol``; stops unconverged after ``max_iter``
    iterations or when 60 halvings of the step find no ascent.

    Returns dict(beta (d,), tau, eta (d,), nu, mean_loglik (at the final parameters),
    n_iter (Newton steps taken), n_fev (value + gradient evaluations), n_hev (Hessian
    evaluations), n_shifted (shifted steps), converged, seconds (wall time),
    trace (mean log-likelihood at init and after each step)).
    """
    start = time.perf_counter()
    X, y, log_f0, theta = _prepare(X, y, eta0, nu0, f0, init)
    p = _derivatives(theta, X, y, log_f0)
    trace = [float(np.mean(p["log_p"]))]
    n_iter, n_fev, n_hev, n_shifted, converged = 0, 1, 0, 0, False
    while True:
        g = _gradient(X, p)
        if np.abs(g).max() < gtol:
            converged = True
            break
        if n_iter == max_iter:
            break
        step, shifted = _ascent_direction(_hessian(X, p), g)
        n_hev += 1
        n_shifted += int(shifted)
        slope = g @ step
        if not shifted and slope / 2.0 < ftol:
            converged = True
            break
        t = 1.0
        for _ in range(60):
            candidate = theta + t * step
            p_new = _derivatives(candidate, X, y, log_f0)
            n_fev += 1
            ll_new = float(np.mean(p_new["log_p"]))
            if ll_new - trace[-1] >= 1e-4 * t * slope:  # Armijo; needs a strict gain
                break
            t /= 2.0
        else:
            break
        theta, p = candidate, p_new
        trace.append(ll_new)
        n_iter += 1
    return _record(
        theta,
        X.shape[1],
        trace,
        start,
        n_iter=n_iter,
        n_fev=n_fev,
        n_hev=n_hev,
        n_shifted=n_shifted,
        converged=converged,
    )
