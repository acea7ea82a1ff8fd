"""The results of least-squares fits of a ``RegressionMoE``: the same ``FitResults`` interface, with
the nonlinear-least-squares covariance nu_hat (J^T J)^-1 (J = df/dtheta, n x p; nu_hat = RSS / n)
in place of the inverse observed information, and no standard errors where J^T J is singular to
working precision, as it is for an over-specified fit (two experts sharing one true atom)."""

import math

import torch
from torch.func import functional_call, jacfwd

from .results import FitResults, parameter_table

SINGULAR = 1e8  # condition number of J^T J beyond which standard errors are not given
CHUNK = 4096  # samples per forward-mode Jacobian block


def gauss_newton_information(model, x: torch.Tensor) -> torch.Tensor:
    """J^T J (p, p) of the regression function at the model's current values over inputs x (n, d),
    J = df/dtheta in the trainable parameters flattened in ``model.trainable_parameters()`` order."""
    params = model.trainable_parameters()
    names, shapes = list(params), [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]
    theta = torch.cat([p.detach().reshape(-1) for p in params.values()])
    info = theta.new_zeros(theta.numel(), theta.numel())
    for a in range(0, x.shape[0], CHUNK):
        xa = x[a : a + CHUNK]

        def fitted(t, xa=xa):
            values = {n: v.reshape(s) for n, v, s in zip(names, t.split(sizes), shapes)}
            return functional_call(model, values, (xa,))

        J = jacfwd(fitted)(theta)  # (chunk, p)
        info += J.T @ J
    return (info + info.T) / 2


class LeastSquaresResults(FitResults):
    """``FitResults`` of least-squares fits: adds ``noise_variance`` (R,) = RSS / n and
    ``gradient_max()``; ``n_params`` counts the noise variance; ``covariance`` is nu_hat (J^T J)^-1,
    all NaN where cond(J^T J) exceeds SINGULAR (``singular(r)`` says why)."""

    def __init__(self, spec, fit, X, Y):
        super().__init__(spec, fit, X, Y)
        self.noise_variance = torch.exp(-2 * self.mean_loglik - 1) / (2 * math.pi)
        self.n_params += 1
        self.aic = self.aic + 2
        self.bic = self.bic + math.log(self.n)

    @property
    def degenerate(self) -> list:
        return [[] for _ in range(len(self))]

    def gradient_max(self) -> torch.Tensor:
        """(R,): the largest entry of the gradient of RSS / n at each estimate, in the optimizer's
        variables (unconstrained inside ``fit.bounds``; the parameters themselves for 'sgd'): what
        the contract's gtol bounds."""
        return self.fit.gradient_max

    def responsibilities(self, X, y, r: int = 0):
        raise ValueError("a regression mixture of experts has no latent components to be responsible for y")

    def singular(self, r: int = 0) -> str | None:
        """Why replication r has no standard errors (J^T J singular to working precision), or None."""
        return self._information(self._replication_index(r))[1]

    def covariance(self, r: int = 0) -> torch.Tensor:
        r = self._replication_index(r)
        info, why = self._information(r)
        if why:
            return torch.full_like(info, math.nan)
        return float(self.noise_variance[r]) * torch.cholesky_inverse(torch.linalg.cholesky(info))

    def summary(self, r: int = 0) -> str:
        """A readable table of replication r: estimates, and standard errors with 95% intervals
        where J^T J is regular; then status, RSS / n, log-likelihood, AIC and BIC."""
        r = self._replication_index(r)
        why = self.singular(r)
        inference = (None, None) if why else (self.se(r), self.conf_int(0.05, r))
        head, rows = parameter_table(self.estimates(r), *inference)
        gate = type(self.spec.gate).__name__
        lines = [
            f"Regression MoE fit by least squares ({self.solver}), {len(self.spec.experts)} experts, {gate}, "
            f"n = {self.n}, replication {r} of {len(self)}",
            "=" * len(head),
            head,
            "-" * len(head),
            *rows,
            "-" * len(head),
            f"status: {self.status[r]} after {int(self.n_iter[r])} iterations",
            f"RSS / n (noise variance): {float(self.noise_variance[r]):.6g}   "
            f"log-likelihood: {float(self.loglik[r]):.6f}   AIC: {float(self.aic[r]):.4f}   "
            f"BIC: {float(self.bic[r]):.4f}   parameters: {self.n_params}",
        ]
        if why:
            lines.append(f"no standard errors: {why}")
        return "\n".join(lines)

    def to_dict(self, r: int = 0, inference: bool = True) -> dict:
        out = super().to_dict(r, inference=inference and not self.singular(r))
        out["noise_variance"] = float(self.noise_variance[r])
        if inference and self.singular(r):
            out["no_standard_errors"] = self.singular(r)
        return out

    def _information(self, r: int):
        if r not in self._covariances:
            info = gauss_newton_information(self._fitted(r), self.X[r])
            w = torch.linalg.eigvalsh(info)
            cond = float(w[-1] / w[0]) if w[0] > 0 else math.inf
            why = (
                f"J^T J is singular to working precision (condition number {cond:.2g} > {SINGULAR:.0e}), as it is "
                "for an over-specified fit (experts sharing a true atom) or parameters the data do not identify"
                if cond > SINGULAR
                else None
            )
            self._covariances[r] = (info, why)
        return self._covariances[r]
