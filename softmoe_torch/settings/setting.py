"""An experiment setting: a thin handle on a ``setting`` config node (conf/setting/) that builds
its mixture (``build``) and gives its truth at sample size n (``truth``), computed once per n.

Every setting handle (this one, a contaminated mixture; ``moe.MoESetting``, a mixture of experts)
answers what a simulated study asks of it: ``model()``, ``truth(n)``, ``true_model(n)``,
``inputs(n, generator)`` (the x's), ``columns`` and ``errors(params, n)`` (its results columns),
``quantities()``, ``labels``,
``theory_slopes(rows)`` and ``reference_slopes()`` (what its report shows)."""

import torch
from omegaconf import DictConfig

from ..metrics.parameters import PAPER_PARAMS, param_errors
from ..model.mixture import Component, ContaminatedMoE
from .build import build_model, build_pretrained
from .configs import config_number, register_resolvers
from .moe import MoESetting
from .paper import LABELS, reported_params
from .regression import RegressionSetting
from .truth import true_params


class Setting:
    """``name``, ``dim`` (d), ``n_prompts`` (K, default 1); ``model()``, ``truth(n)``, ``true_model(n)``;
    the paper's four errors as results columns."""

    columns = tuple(f"err_{p}" for p in PAPER_PARAMS)
    labels = LABELS
    reference = "paper"  # whose reported slopes ``reference_slopes`` gives

    def __init__(self, cfg: DictConfig):
        if cfg.get("kind", "contaminated") != "contaminated":
            raise ValueError(
                f"setting {cfg.name} is a mixture of experts (kind: {cfg.kind}), not a contaminated one: "
                "this command takes contaminated settings; fit it with python -m softmoe_torch.fit"
            )
        register_resolvers()  # the setting's values use ${basis:..} and ${ones_over_sqrt:..}
        self.cfg = cfg
        self.name = cfg.name
        self.dim = int(cfg.dim)
        self.n_prompts = config_number(cfg.get("n_prompts", 1), "setting.n_prompts", int, 1)
        self._truth = {}

    def pretrained(self) -> Component:
        """The frozen pre-trained component with its known parameters."""
        return build_pretrained(self.cfg)

    def model(self, dtype=torch.float64, device="cpu") -> ContaminatedMoE:
        """A fresh mixture with ``n_prompts`` prompts, its experts and gate checked."""
        return build_model(self.cfg, self.n_prompts, dtype=dtype, device=device)

    def truth(self, n: int) -> dict:
        """True trainable parameters at sample size n: {name: tensor}, float64 on CPU (fresh
        copies of values computed once per n)."""
        if self.n_prompts != 1:
            raise ValueError(
                f"setting.truth describes one prompt, not setting.n_prompts={self.n_prompts}: "
                "simulated sweeps (run) need n_prompts=1; to fit data use init=random"
            )
        n = int(n)
        if n not in self._truth:
            self._truth[n] = true_params(self.cfg, n)
        return {k: v.clone() for k, v in self._truth[n].items()}

    def true_model(self, n: int) -> ContaminatedMoE:
        """The data-generating mixture at sample size n (float64, CPU)."""
        model = self.model()
        with torch.no_grad():
            for name, value in self.truth(n).items():
                model.get_parameter(name).copy_(value)
        return model

    def inputs(self, n: int, generator=None) -> torch.Tensor:
        """Simulated inputs X (n, d) ~ N(0, I), float64."""
        return torch.randn(n, self.dim, generator=generator, dtype=torch.float64)

    def errors(self, params: dict, n: int) -> dict:
        """{column: (R,)}: the paper's four errors of the fits ``params`` {name: (R, ...)}."""
        return {f"err_{k}": v for k, v in param_errors(params, self.truth(n)).items()}

    def quantities(self) -> tuple:
        """The errors the report fits slopes to (``paper.reported_params``)."""
        return reported_params(self.cfg)

    def theory_slopes(self, rows=None) -> dict:
        return {p: float(self.cfg.theory_slopes[p]) for p in self.quantities()}

    def reference_slopes(self) -> dict:
        return dict(self.cfg.get("paper_slopes") or {})


SETTING_KINDS = {
    "contaminated": Setting,
    "moe": MoESetting,
    "regression": RegressionSetting,
}  # setting.kind -> its handle; a new kind registers here


def load_setting(cfg: DictConfig):
    """The handle on a ``setting`` node, by its ``kind`` (default contaminated, see SETTING_KINDS)."""
    kind = cfg.get("kind", "contaminated")
    if kind not in SETTING_KINDS:
        raise ValueError(f"setting.kind must be one of {', '.join(SETTING_KINDS)}, got {kind!r}")
    return SETTING_KINDS[kind](cfg)
