"""The results of a fit: one object holding the model specification and the fitted values of R
replications, answering what a user asks after a fit (in the spirit of statsmodels' results).

Per-replication quantities are tensors with a leading axis R; methods that concern one fitted
model take ``r`` (default 0, the only one for a single data set)."""

import copy
import json
import math
from functools import cached_property

import torch

from ..model.mixture import ContaminatedMoE
from .degeneracy import degeneracy, trainable_sizes
from .driver import BatchFit
from .inference import aic, bic, load_params, observed_information, wald_covariance
from .inputs import as_tensor, model_inputs


class FitResults:
    """Fitted values and record of R fits of ``spec`` (the caller's model, never mutated) to
    X (R, n, d), Y (R, n).

    Attributes: ``params`` {name: (R, *shape)}; ``mean_loglik``, ``loglik`` (total), ``n_iter``,
    ``converged`` (R,); ``status``, ``trace``, ``at_bound`` (lists over R); ``seconds``,
    ``n_evals``, ``solver``, ``fused``, ``n``, ``n_params``, ``aic``, ``bic`` (R,); ``degenerate``
    (list over R of the reasons a fit is a spike on a few observations, see ``degeneracy.py``)."""

    def __init__(self, spec, fit: BatchFit, X: torch.Tensor, Y: torch.Tensor):
        self.spec, self.fit, self.X, self.Y = spec, fit, X, Y
        for name in (
            "params",
            "mean_loglik",
            "n_iter",
            "converged",
            "status",
            "trace",
            "at_bound",
            "seconds",
            "n_evals",
            "solver",
            "fused",
        ):
            setattr(self, name, getattr(fit, name))
        self.n = Y.shape[1]
        self.loglik = self.mean_loglik * self.n
        self.n_params = sum(v[0].numel() for v in self.params.values())
        self.aic = aic(self.loglik, self.n_params)
        self.bic = bic(self.loglik, self.n_params, self.n)

    def __len__(self):
        return len(self.fit)

    def __getitem__(self, name: str) -> torch.Tensor:
        """The estimates of one parameter, (R, *shape)."""
        if name not in self.params:
            raise KeyError(f"no parameter {name!r}; the fitted parameters are {list(self.params)}")
        return self.params[name]

    def estimates(self, r: int = 0) -> dict:
        """{name: tensor of the parameter's shape} of replication r."""
        r = self._replication_index(r)
        return {k: v[r] for k, v in self.params.items()}

    def model(self, r: int = 0):
        """A copy of the model with replication r's estimates loaded."""
        return load_params(copy.deepcopy(self.spec), self.params, self._replication_index(r))

    def predict(self, X, r: int = 0) -> torch.Tensor:
        """E[y | x] under replication r's fit; X (n, d) -> (n,)."""
        with torch.no_grad():
            return self._fitted(r).predictive_mean(self._inputs(X))

    def gate_probs(self, X, r: int = 0) -> torch.Tensor:
        """Gate weights, column 0 the reference (pre-trained) component; X (n, d) -> (n, K)."""
        with torch.no_grad():
            return self._fitted(r).gate_probs(self._inputs(X))

    def responsibilities(self, X, y, r: int = 0) -> torch.Tensor:
        """Posterior component probabilities given (x, y); X (n, d), y (n,) -> (n, K)."""
        with torch.no_grad():
            return self._fitted(r).responsibilities(
                self._inputs(X), as_tensor(y, "y", self.X.dtype, self.X.device, finite=False)
            )

    def covariance(self, r: int = 0) -> torch.Tensor:
        """Inverse observed information at replication r's estimate, (p, p) over the flattened
        parameters in ``params`` order (NaN where it is not positive definite)."""
        if r not in self._covariances:
            info = observed_information(self._fitted(r), self.X[r], self.Y[r])
            self._covariances[r] = wald_covariance(info)
        return self._covariances[r]

    def se(self, r: int = 0) -> dict:
        """Standard errors sqrt(diag(covariance)) {name: tensor of the parameter's shape}."""
        return self._unflatten(self.covariance(r).diagonal().sqrt())

    def conf_int(self, alpha: float = 0.05, r: int = 0) -> dict:
        """Wald intervals {name: (lower, upper)} of level 1 - alpha: estimate -/+ z se."""
        z = _normal_quantile(1 - alpha / 2)
        est, se = self.estimates(r), self.se(r)
        return {k: (est[k] - z * se[k], est[k] + z * se[k]) for k in est}

    @cached_property
    def degenerate(self) -> list:
        """Per replication, why its fit is degenerate ([] if it is not); see ``degeneracy.py``."""
        sizes = trainable_sizes(self.spec)
        return [degeneracy(self.model(r), self.at_bound[r], self.X[r], sizes) for r in range(len(self))]

    def replication(self, r: int) -> "FitResults":
        """The results of replication r alone."""
        r = self._replication_index(r)
        keep = slice(r, r + 1)
        one = self.fit.take(keep)
        return FitResults(self.spec, one, self.X[keep], self.Y[keep])

    def to_dict(self, r: int = 0, inference: bool = True) -> dict:
        """JSON-ready record of replication r: estimates (and, with ``inference``, standard errors
        and 95% intervals) by parameter name, log-likelihood, AIC, BIC and the fit's record."""
        out = {"estimates": _lists(self.estimates(r))}
        if inference:
            lower_upper = self.conf_int(0.05, r)
            out["se"] = _lists(self.se(r))
            out["ci95"] = {k: [v[0].tolist(), v[1].tolist()] for k, v in lower_upper.items()}
        out.update(
            loglik=float(self.loglik[r]),
            mean_loglik=float(self.mean_loglik[r]),
            n=self.n,
            n_params=self.n_params,
            aic=float(self.aic[r]),
            bic=float(self.bic[r]),
            converged=bool(self.converged[r]),
            status=self.status[r],
            n_iter=int(self.n_iter[r]),
            at_bound=self.at_bound[r],
            degenerate=self.degenerate[r],
            solver=self.solver,
            seconds=self.seconds,
        )
        return out

    def to_json(self, r: int = 0, **kwargs) -> str:
        return json.dumps(self.to_dict(r), **kwargs)

    def summary(self, r: int = 0) -> str:
        """A readable table of replication r: estimate, SE and 95% interval per parameter entry,
        then status, log-likelihood, AIC and BIC."""
        r = self._replication_index(r)
        head, rows = parameter_table(self.estimates(r), self.se(r), self.conf_int(0.05, r))
        title = "Softmax-contaminated MoE" if isinstance(self.spec, ContaminatedMoE) else "Mixture-of-experts"
        lines = [
            f"{title} fit ({self.solver}), n = {self.n}, replication {r} of {len(self)}",
            "=" * len(head),
            head,
            "-" * len(head),
            *rows,
            "-" * len(head),
            f"status: {self.status[r]} after {int(self.n_iter[r])} iterations"
            + (f"; at a bound: {', '.join(self.at_bound[r])}" if self.at_bound[r] else ""),
            f"log-likelihood: {float(self.loglik[r]):.6f}   "
            f"AIC: {float(self.aic[r]):.4f}   BIC: {float(self.bic[r]):.4f}"
            f"   parameters: {self.n_params}",
        ]
        lines += [
            f"warning: degenerate fit: {reason} (a spike that the likelihood rewards without limit; "
            "more data, more starts or a floor on the prompt's variance)"
            for reason in self.degenerate[r]
        ]
        return "\n".join(lines)

    def __repr__(self):
        return f"<FitResults: {len(self)} fit(s) by {self.solver}, n = {self.n}, status {sorted(set(self.status))}>"

    @cached_property
    def _covariances(self) -> dict:
        return {}

    @cached_property
    def _models(self) -> dict:
        return {}

    def _fitted(self, r):
        if r not in self._models:
            self._models[r] = self.model(r)
        return self._models[r]

    def _inputs(self, X) -> torch.Tensor:
        """X (n, d) as a tensor of the fit's dtype and device, checked to be inputs of the model."""
        return model_inputs(self.spec, X, self.X.dtype, self.X.device)

    def _replication_index(self, r) -> int:
        """r as an index of the R fits (negative counts from the end); a one-line IndexError otherwise."""
        if isinstance(r, bool) or not isinstance(r, int) or not -len(self) <= r < len(self):
            raise IndexError(
                f"replication {r!r} does not exist: these results hold {len(self)} fit(s), r = 0..{len(self) - 1}"
            )
        return r % len(self)

    def _unflatten(self, flat) -> dict:
        out, start = {}, 0
        for name, v in self.params.items():
            size = v[0].numel()
            out[name] = flat[start : start + size].reshape(v.shape[1:])
            start += size
        return out


def parameter_table(est: dict, se: dict | None = None, ci: dict | None = None):
    """(header, rows) of a summary's table: one row per parameter entry, its estimate, and with
    ``se`` and ``ci`` {name: (lower, upper)} its standard error and 95% interval."""
    head = f"{'parameter':<26}{'estimate':>13}" + ("" if se is None else f"{'se':>12}{'[0.025':>13}{'0.975]':>13}")
    rows = []
    for name, value in est.items():
        flat = value.reshape(-1)
        for i in range(flat.numel()):
            label = name if value.dim() == 0 or flat.numel() == 1 else f"{name}[{i}]"
            row = f"{label:<26}{float(flat[i]):>13.6g}"
            if se is not None:
                lo, hi = ci[name][0].reshape(-1)[i], ci[name][1].reshape(-1)[i]
                row += f"{float(se[name].reshape(-1)[i]):>12.4g}{float(lo):>13.6g}{float(hi):>13.6g}"
            rows.append(row)
    return head, rows


def _lists(values: dict) -> dict:
    return {k: v.tolist() for k, v in values.items()}


def _normal_quantile(q: float) -> float:
    return math.sqrt(2) * torch.special.erfinv(torch.tensor(2 * q - 1, dtype=torch.float64)).item()
