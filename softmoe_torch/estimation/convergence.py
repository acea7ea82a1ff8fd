"""The convergence contract, the same for every fitting method.

An *iteration* is one EM iteration (E-step + M-step) or one accepted quasi-Newton / Newton step
on the marginal log-likelihood. After each iteration a fit is **converged** when

- the change of its criterion over that iteration is below ``tol``; the criterion (``rule``) is
  the mean log-likelihood (``loglik``, absolute change), the same relative to |mean log-likelihood|
  (``loglik_rel``), or the parameters (``params``: the largest absolute change of any natural
  parameter entry); or
- the largest entry of the gradient of the mean log-likelihood in the unconstrained parameters
  is at most ``gtol``.

A fit whose line search finds no ascent step is also **converged** when even the full step's
predicted gain (quadratic model) is below the float rounding of the mean log-likelihood
(64 eps |ll|): no better optimum can be resolved. Otherwise the fit ends as ``max_iter``
(``max_iter`` iterations done), ``stalled`` (no step raises the likelihood beyond rounding while
more was predicted, or an EM step would have lowered it, in which case the step is undone and
the reason says so), or ``failed: <reason>``
(non-finite values; the parameters roll back to the last finite iterate). Only ``converged``
counts as converged; the others raise a ``ConvergenceWarning``."""

import warnings
from dataclasses import dataclass

import torch

RULES = ("loglik", "loglik_rel", "params")


class ConvergenceWarning(UserWarning):
    """A fit ended without meeting the convergence contract."""


@dataclass
class Contract:
    """tol, rule, gtol and max_iter of the contract above."""

    tol: float = 1e-8
    rule: str = "loglik"
    gtol: float = 1e-8
    max_iter: int = 1000

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"fit.rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if not (self.tol > 0 and self.gtol >= 0 and self.max_iter >= 1):
            raise ValueError("fit.tol must be positive, fit.gtol non-negative and fit.max_iter at least 1")

    def met(self, ll_old, ll_new, theta_old, theta_new, grad) -> torch.Tensor:
        """(m,) bool: the contract holds after an iteration from (ll_old, theta_old (m, p)) to
        (ll_new, theta_new); grad (m, p) is the gradient of the mean log-likelihood in u at the new point."""
        if self.rule == "loglik":
            change = (ll_new - ll_old).abs()
        elif self.rule == "loglik_rel":
            change = (ll_new - ll_old).abs() / ll_new.abs().clamp_min(1e-300)
        else:
            change = (theta_new - theta_old).abs().amax(1)
        return (change < self.tol) | self.stationary(grad)

    def stationary(self, grad) -> torch.Tensor:
        """(m,) bool: the largest gradient entry is at most gtol."""
        return grad.abs().amax(1) <= self.gtol


def rounding(ll: torch.Tensor) -> torch.Tensor:
    """The change of a mean log-likelihood that float rounding can explain, (m,)."""
    return 64 * torch.finfo(ll.dtype).eps * ll.abs().clamp_min(1.0)


def warn_unconverged(status: list, advice: str, stacklevel: int = 3) -> None:
    """One ConvergenceWarning naming how many fits did not converge, the first reason, and advice."""
    bad = [s for s in status if s != "converged"]
    if bad:
        warnings.warn(
            f"{len(bad)} of {len(status)} fits did not converge ({bad[0]}); {advice}",
            ConvergenceWarning,
            stacklevel=stacklevel,
        )
