"""An experiment setting: a thin handle on a ``setting`` config node (conf/setting/) that builds
its mixture (``build``) and gives its truth at sample size n (``truth``), computed once per n."""
import torch
from omegaconf import DictConfig

from .build import build_model, build_pretrained
from .configs import register_resolvers
from ..model.mixture import Component, ContaminatedMoE
from .truth import true_params


class Setting:
    """``name``, ``dim`` (d), ``n_prompts`` (K, default 1); ``model()``, ``truth(n)``, ``true_model(n)``."""

    def __init__(self, cfg: DictConfig):
        register_resolvers()  # the setting's values use ${basis:..} and ${ones_over_sqrt:..}
        self.cfg = cfg
        self.name = cfg.name
        self.dim = int(cfg.dim)
        self.n_prompts = int(cfg.get("n_prompts", 1))
        if self.n_prompts < 1:
            raise ValueError(f"setting.n_prompts must be at least 1, got {self.n_prompts}")
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
