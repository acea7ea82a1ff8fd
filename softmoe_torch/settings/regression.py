"""A regression setting: a ``setting`` node with ``kind: regression`` describes a regression mixture
of experts Y = f_G(X) + N(0, nu) fitted by least squares (``RegressionMoE``): ``n_experts`` experts
(``expert``: linear a^T x + b, relu or sigmoid of it) under a fitted ``gate`` (sigmoid or softmax),
inputs ``x`` uniform on [-1, 1]^d (symmetric) or [0, 1]^d (unit), and a true model of
``truth.n_experts`` experts: drawn from ``truth.seed`` as the sigmoid-gating study describes its
``truth.regime`` (``regression_truths``), or, with ``truth.regime: given``, the values
``truth.params`` under the gate ``truth.gate``. Its results columns are the least-squares papers'
Voronoi loss and per-part errors (``metrics.voronoi.ls_errors``) where the fitted gate is the
truth's; where it is not (a misspecified fit), the same loss against the fitted model's best
approximation of the truth (``best_fit``, the papers' D3); and everywhere the error of the regression
function (``fn``: the root mean square of f_hat - f* over a fixed sample of x)."""

import math

import torch
from omegaconf import DictConfig, OmegaConf

from ..metrics.voronoi import ls_errors, regression_atoms
from ..model.regression import RegressionMoE
from .best_fit import cached_projection, project
from .best_fit import options as best_fit_options
from .build import load_values
from .configs import config_number
from .regression_truths import EXPERTS, REGIMES, draw_truth, near_truth_start, regression_model

GATES = ("sigmoid", "softmax")
INPUTS = ("symmetric", "unit")  # X ~ Uniform([-1, 1]^d) | Uniform([0, 1]^d)
QUANTITIES = ("d1", "mass", "gate_slope", "expert_slope", "expert_bias", "d3", "fn")
MISSPECIFIED = ("d3", "fn")  # the quantities of a fit under the other gate than the truth's
LABELS = {
    "d1": r"$\mathcal{D}_1$",
    "mass": r"max$_j\,|\sum_{A_j} g(\hat\beta_{0i}) - g(\beta^*_{0j})|$",
    "gate_slope": r"max $\|\Delta\beta_1\|$",
    "expert_slope": r"max $\|\Delta a\|$",
    "expert_bias": r"max $|\Delta b|$",
    "d3": r"$\mathcal{D}_3$ (to the best fit $\bar G$)",
    "fn": r"$\|\hat f - f^*\|_{L^2}$",
}
FN_POINTS, FN_SEED = 4096, 20250102  # the fixed x sample of the regression-function error


class RegressionSetting:
    """``name``, ``dim`` (d), ``n_experts`` (K fitted), ``n_true`` (k*), ``gate`` (fitted),
    ``expert``, ``regime``; the study's view (see ``setting.py``) and ``starting_points``."""

    labels = LABELS
    reference = "paper"
    columns = (*(f"err_{q}" for q in QUANTITIES), "cells")

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.dim = config_number(cfg.dim, "setting.dim", int, 1)
        self.n_experts = config_number(cfg.n_experts, "setting.n_experts", int, 1)
        t = cfg.truth
        self.n_true = config_number(t.n_experts, "setting.truth.n_experts", int, 1)
        self.nu = config_number(t.nu, "setting.truth.nu", float, 0)
        for key, value, allowed in (
            ("gate", cfg.gate, GATES),
            ("expert", cfg.expert, tuple(EXPERTS)),
            ("x", cfg.get("x", "symmetric"), INPUTS),
            ("truth.regime", t.regime, (*REGIMES, "given")),
        ):
            if value not in allowed:
                raise ValueError(f"setting.{key} must be one of {', '.join(allowed)}, got {value!r}")
        self.gate, self.expert, self.regime = cfg.gate, cfg.expert, t.regime
        if self.regime == "given" and t.get("gate") not in GATES:
            raise ValueError(f"setting.truth.regime=given needs setting.truth.gate, one of {', '.join(GATES)}")
        self.true_gate = t.gate if self.regime == "given" else ("softmax" if self.regime == "softmax" else "sigmoid")
        self._truth, self._best = None, None

    def model(self, dtype=torch.float64, device="cpu") -> RegressionMoE:
        """A fresh regression mixture of ``n_experts`` experts under the fitted gate."""
        model = regression_model(self.n_experts, self.dim, self.gate, self.expert, self.nu)
        return model.to(dtype=dtype, device=device)

    def true_model(self, n: int | None = None) -> RegressionMoE:
        """The data-generating mixture (float64, CPU), drawn once; it does not depend on n."""
        if self._truth is None and self.regime == "given":
            self._truth = regression_model(self.n_true, self.dim, self.true_gate, self.expert, self.nu)
            values = {**OmegaConf.to_container(self.cfg.truth.params), "nu": self.nu}
            load_values(self._truth, values, "setting.truth.params")
        elif self._truth is None:
            seed = config_number(self.cfg.truth.seed, "setting.truth.seed", int, 0)
            self._truth = draw_truth(self.regime, self.expert, self.dim, self.n_true, seed, self.nu)
        return self._truth

    def truth(self, n: int | None = None) -> dict:
        """The true parameters {name: tensor} (k* experts, the truth's gate)."""
        return {k: v.detach().clone() for k, v in self.true_model(n).named_parameters()}

    def inputs(self, n: int, generator=None) -> torch.Tensor:
        """Simulated inputs X (n, d), float64: Uniform([-1, 1]^d), or Uniform([0, 1]^d) for x: unit."""
        u = torch.rand(n, self.dim, generator=generator, dtype=torch.float64)
        return u if self.cfg.get("x", "symmetric") == "unit" else 2 * u - 1

    def starting_points(self, init: dict, n: int, reps: list, seed_of) -> list:
        """The near-truth starts [{name: (R, ...)}] of replications ``reps``: the study's start, the
        truth's atoms plus a copy of one, every entry + N(0, init.scale^2), from seed seed_of(0, j);
        one start (init.n_init and init.power do not apply)."""
        if self.n_experts != self.n_true + 1:
            raise ValueError(
                f"init=near_truth starts k* + 1 = {self.n_true + 1} experts (the truth's and one copy), "
                f"not setting.n_experts={self.n_experts}; use init=random"
            )
        truth, scale = self.true_model(), float(init["scale"])
        per_rep = [near_truth_start(truth, self.gate, seed_of(0, j), scale) for j in range(len(reps))]
        return [{k: torch.stack([s[k] for s in per_rep]) for k in per_rep[0]}]

    def best_fit(self, compute: bool = True) -> dict | None:
        """The fitted model's best approximation of the truth (``best_fit.project``; options
        ``setting.best_fit`` over ``best_fit.DEFAULTS``), computed once and kept on disk:
        {"params": {name: tensor}, "rss", "status", "starts"}; ``compute`` False: None where none is kept."""
        if self._best is None:
            options = best_fit_options(OmegaConf.to_container(self.cfg.get("best_fit") or OmegaConf.create({})))
            key = {
                "truth": OmegaConf.to_container(self.cfg.truth, resolve=True),
                **{k: self.cfg.get(k) for k in ("dim", "n_experts", "gate", "expert")},
                "x": self.cfg.get("x", "symmetric"),
                **options,
            }

            def compute_it():
                return project(self.model(), self.gate, self.true_model(), self.inputs, options)

            self._best = cached_projection(key, compute_it if compute else None)
        return self._best

    def prepare(self):
        """Work done once before a sweep's workers start: a misspecified fit's best fit."""
        if self.gate != self.true_gate:
            self.best_fit()

    def errors(self, params: dict, n: int) -> dict:
        """{column: (R,)} for the fits ``params`` {name: (R, ...)}: where the fitted gate is the
        truth's, the loss D1 and its parts (``ls_errors``) against the truth; elsewhere the same loss
        against the best fit (``d3``); the cells of the loss computed; always ``fn``."""
        R = next(iter(params.values())).shape[0]
        host = {k: v.detach().cpu().double().numpy() for k, v in params.items()}
        out = {f"err_{q}": torch.full((R,), math.nan, dtype=torch.float64) for q in QUANTITIES}
        exact = self.gate == self.true_gate
        ref, k = (self.truth(), self.n_true) if exact else (self.best_fit()["params"], self.n_experts)
        ref = regression_atoms({name: v[None].numpy() for name, v in ref.items()}, k, self.gate, 0)
        rows = [ls_errors(regression_atoms(host, self.n_experts, self.gate, r), ref, self.gate) for r in range(R)]
        for q in QUANTITIES[:5] if exact else ("d1",):
            out[f"err_{q if exact else 'd3'}"] = torch.tensor([row[q] for row in rows], dtype=torch.float64)
        out["err_fn"] = self.function_error(params)
        return {**out, "cells": [row["cells"] for row in rows]}

    def function_error(self, params: dict) -> torch.Tensor:
        """(R,): sqrt(mean over FN_POINTS fixed x of (f_hat(x) - f*(x))^2) for each fit."""
        x = self.inputs(FN_POINTS, torch.Generator().manual_seed(FN_SEED))
        model = self.model()
        with torch.no_grad():
            target = self.true_model()(x)
            fitted = torch.func.vmap(lambda p: torch.func.functional_call(model, p, (x,)))(
                {k: v.detach().cpu().double() for k, v in params.items()}
            )
        return ((fitted - target) ** 2).mean(-1).sqrt()

    def quantities(self) -> tuple:
        """The columns the report fits slopes to: all but d3 for a well-specified fit, d3 and fn else."""
        return tuple(q for q in QUANTITIES if q != "d3") if self.gate == self.true_gate else MISSPECIFIED

    def theory_slopes(self, rows=None) -> dict:
        """The theory's rates of D1 as we read the papers' abstracts: -1/2 where the experts are
        strongly identifiable (ReLU under either gate, sigmoid ridge experts under softmax) and for
        linear experts in Regime 2 of the sigmoid gate; none (slower than any power of n) for linear
        experts under a softmax gate or in Regime 1; ``fn`` -1/2 (the parametric rate of the
        regression function) where the model is well specified; none for ``d3`` (no rate of the
        misspecified fit is stated in the text we have)."""
        slow = self.expert == "linear" and (self.gate == "softmax" or self.regime == "regime1")
        exact = self.gate == self.true_gate
        d1 = None if slow or not exact else -0.5
        parts = dict.fromkeys(("gate_slope", "expert_slope", "expert_bias"))
        return {"d1": d1, "mass": d1, **parts, "d3": None, "fn": -0.5 if exact else None}

    def reference_slopes(self) -> dict:
        """The paper's published slope of its Voronoi loss for this cell (``published_slopes``, by
        expert_gate): D1 where the fitted gate is the truth's, D3 (to the best fit) else."""
        slope = (self.cfg.get("published_slopes") or {}).get(f"{self.expert}_{self.gate}")
        return {} if slope is None else {"d1" if self.gate == self.true_gate else "d3": float(slope)}
