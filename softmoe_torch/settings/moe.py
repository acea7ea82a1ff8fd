"""A mixture-of-experts setting: a ``setting`` node with ``kind: moe`` describes K components that
are all trainable, of one family (``component.expert``, ``component.density``), under a softmax
gate with component 0 as its reference, and (optionally) a true model of k* components
(``truth.components``, ``truth.gate``) from which data are simulated. K = n_components may exceed
k* (an over-specified fit). Its results columns are the Voronoi losses and per-part errors of
``softmoe_torch.metrics.voronoi``, with ``sibling_slopes`` (by K) the sibling code's published slopes."""

from collections import Counter

import torch
from omegaconf import DictConfig

from ..metrics.voronoi import atoms, theory_slope, voronoi_errors
from ..model.mixture import Component, MixtureOfExperts
from .build import instantiate_node, load_values
from .configs import config_number, register_resolvers
from .module_checks import check_experts

INPUTS = ("uniform", "grid")
QUANTITIES = (
    "d1",
    "d1_unscaled",
    "d1_fixed",
    "d2",
    "d2_unscaled",
    "d2_fixed",
    "mass",
    "gate_slope",
    "expert_slope",
    "expert_bias",
    "variance",
    "gate_slope_in_cells",
    "expert_slope_in_cells",
    "expert_bias_in_cells",
    "variance_in_cells",
)
LABELS = {
    "d1": r"$\mathcal{D}_1$",
    "d1_unscaled": r"$\mathcal{D}_1$, fitted scale",
    "d1_fixed": r"$\mathcal{D}_1$, no translation",
    "d2": r"$\mathcal{D}_2$",
    "d2_unscaled": r"$\mathcal{D}_2$, fitted scale",
    "d2_fixed": r"$\mathcal{D}_2$, no translation",
    "mass": r"max$_j\,|\sum_{A_j} e^{\hat\beta_{0i}} - e^{\beta^*_{0j} + t_0}|$",
    "gate_slope": r"max $\|\Delta\beta_1\|$",
    "expert_slope": r"max $\|\Delta a\|$",
    "expert_bias": r"max $|\Delta b|$",
    "variance": r"max $|\Delta\nu|$",
    "gate_slope_in_cells": r"$\|\Delta\beta_1\|$ in cells of several, weighted",
    "expert_slope_in_cells": r"$\|\Delta a\|$ in cells of several, weighted",
    "expert_bias_in_cells": r"$|\Delta b|$ in cells of several, weighted",
    "variance_in_cells": r"$|\Delta\nu|$ in cells of several, weighted",
}


class MoESetting:
    """``name``, ``dim`` (d), ``n_components`` (K fitted), ``n_true`` (k*); ``model()``,
    ``true_model()``, ``truth(n)``, ``inputs(n, generator)`` and the study's view (see
    ``setting.py``): the columns err_<quantity> and ``cells`` (atoms per true atom, '2+1')."""

    columns = (*(f"err_{q}" for q in QUANTITIES), "cells")
    labels = LABELS
    reference = "sibling"

    def __init__(self, cfg: DictConfig):
        register_resolvers()
        self.cfg = cfg
        self.name = cfg.name
        self.dim = int(cfg.dim)
        self.n_components = config_number(cfg.n_components, "setting.n_components", int, 2)
        truth = cfg.get("truth")
        self.n_true = len(truth.components) if truth is not None and truth.get("components") else None
        if cfg.get("x", "uniform") not in INPUTS:
            raise ValueError(f"setting.x must be one of {', '.join(INPUTS)}, got {cfg.x!r}")

    def _mixture(self, K: int, dtype, device) -> MixtureOfExperts:
        components = [
            Component(
                instantiate_node(self.cfg.component.expert, "expert").to(torch.float64),
                instantiate_node(self.cfg.component.density, "density"),
            )
            for _ in range(K)
        ]
        gate = instantiate_node(self.cfg.gate, "gate", n_prompts=K - 1).to(torch.float64)
        model = MixtureOfExperts(components, gate).to(dtype=dtype, device=device)
        check_experts(model, self.dim)
        return model

    def model(self, dtype=torch.float64, device="cpu") -> MixtureOfExperts:
        """A fresh mixture of ``n_components`` trainable components, checked."""
        return self._mixture(self.n_components, dtype, device)

    def true_model(self, n: int | None = None) -> MixtureOfExperts:
        """The data-generating mixture of k* components (float64, CPU); it does not depend on n."""
        if self.n_true is None:
            raise ValueError(f"setting {self.name} has no truth.components: it can fit data but not simulate them")
        model = self._mixture(self.n_true, torch.float64, "cpu")
        t = self.cfg.truth
        for k, (component, values) in enumerate(zip(model.components, t.components)):
            load_values(component.expert, values.expert, f"setting.truth.components[{k}].expert")
            with torch.no_grad():
                component.nu.fill_(float(values.nu))
        load_values(model.gate, t.gate, "setting.truth.gate")
        return model

    def truth(self, n: int | None = None) -> dict:
        """The true parameters {name: tensor} (k* components; the fitted model's names when K = k*)."""
        return {k: v.detach().clone() for k, v in self.true_model(n).trainable_parameters().items()}

    def inputs(self, n: int, generator=None) -> torch.Tensor:
        """Simulated inputs X (n, d), float64: uniform on [0, 1]^d, or the grid linspace(0, 1, n) (d = 1)."""
        if self.cfg.get("x", "uniform") == "grid":
            if self.dim != 1:
                raise ValueError(f"setting.x=grid needs dim 1, got {self.dim}")
            return torch.linspace(0, 1, n, dtype=torch.float64).unsqueeze(1)
        return torch.rand(n, self.dim, generator=generator, dtype=torch.float64)

    def errors(self, params: dict, n: int) -> dict:
        """{column: (R,)} for the fits ``params`` {name: (R, ...)}: the Voronoi losses against the
        truth, the per-part errors at the translation that minimizes D1 (exact fit) or D2
        (over-specified), and the cells."""
        names = [f"components.{k}" for k in range(self.n_components)]
        truth = {k: v.unsqueeze(0) for k, v in self.truth().items()}
        true = atoms(truth, [f"components.{k}" for k in range(self.n_true)], 0)
        main = "d1" if self.n_components == self.n_true else "d2"
        R = next(iter(params.values())).shape[0]
        host = {k: v.detach().cpu().double().numpy() for k, v in params.items()}
        rows = [voronoi_errors(atoms(host, names, r), true, main) for r in range(R)]
        out = {f"err_{q}": torch.tensor([row[q] for row in rows], dtype=torch.float64) for q in QUANTITIES}
        return {**out, "cells": [row["cells"] for row in rows]}

    def quantities(self) -> tuple:
        """The columns the report fits slopes to: all, less the errors in cells of several atoms for an
        exact fit (it has none)."""
        exact = self.n_components == self.n_true
        return tuple(q for q in QUANTITIES if not (exact and q.endswith("_in_cells")))

    def theory_slopes(self, rows=None) -> dict:
        """The theory's rates given the cells the fits found: the most common largest cell at the
        largest n of ``rows`` (without rows, K - k* + 1)."""
        largest = self.n_components - self.n_true + 1
        if rows:
            top = max(int(r["n"]) for r in rows)
            sizes = [max(int(c) for c in r["cells"].split("+")) for r in rows if int(r["n"]) == top and r.get("cells")]
            largest = Counter(sizes).most_common(1)[0][0] if sizes else largest
        exact = self.n_components == self.n_true
        return {q: theory_slope(q, largest, exact) for q in QUANTITIES}

    def reference_slopes(self) -> dict:
        """The sibling code's published slopes for this K (its losses take no translation infimum)."""
        slopes = self.cfg.get("sibling_slopes") or {}
        return dict(slopes.get(f"k{self.n_components}") or {})
