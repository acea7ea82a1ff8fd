"""An experiment setting: the frozen pre-trained component, the prompt family, and the true
parameters as functions of the sample size n (DESIGN.md section 2)."""
import math

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .gates import SoftmaxGate
from .mixture import Component, ContaminatedMoE

PAPER_PARAMS = ("beta", "exp_tau", "eta", "nu")


def _instantiate(cfg, what: str):
    try:
        return instantiate(cfg)
    except Exception as err:  # hydra wraps import and argument errors; keep the message to one line
        msg = str(err).strip().splitlines()[0]
        raise ValueError(f"cannot build the {what} from {OmegaConf.to_container(cfg)}: {msg}") from None


class Setting:
    """Wraps a ``setting`` config node. Truth at sample size n:
    eta* = eta * (1 + perturb.eta * n^-power), nu* = nu * (1 + perturb.nu * n^-power)."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.dim = int(cfg.dim)

    def pretrained(self) -> Component:
        """The frozen pre-trained component with its known parameters."""
        p = self.cfg.pretrained
        expert = _instantiate(p.expert, "pre-trained expert")
        if p.get("params"):
            state = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in p.params.items()}
            expert.load_state_dict(state, strict=True)
        return Component(expert, _instantiate(p.density, "pre-trained density"), nu=float(p.nu), frozen=True)

    def model(self, dtype=torch.float64, device="cpu") -> ContaminatedMoE:
        """A fresh mixture: frozen pre-trained component, one prompt, softmax gate."""
        pr = self.cfg.prompt
        prompt = Component(_instantiate(pr.expert, "prompt expert"), _instantiate(pr.density, "prompt density"))
        return ContaminatedMoE(self.pretrained(), prompt, SoftmaxGate(self.dim)).to(dtype=dtype, device=device)

    def truth(self, n: int) -> dict:
        """True trainable parameters at sample size n: {name: tensor}, float64 on CPU."""
        t = self.cfg.truth
        shrink = float(n) ** (-float(t.perturb.power))
        eta = torch.tensor(list(t.eta), dtype=torch.float64) * (1 + float(t.perturb.eta) * shrink)
        nu = float(t.nu) * (1 + float(t.perturb.nu) * shrink)
        return {
            "prompts.0.nu": torch.tensor(nu, dtype=torch.float64),
            "prompts.0.expert.eta": eta,
            "gate.beta": torch.tensor([list(t.beta)], dtype=torch.float64),
            "gate.tau": torch.tensor([float(t.tau)], dtype=torch.float64),
        }

    def true_model(self, n: int) -> ContaminatedMoE:
        """The data-generating mixture at sample size n (float64, CPU)."""
        model = self.model()
        with torch.no_grad():
            for name, value in self.truth(n).items():
                model.get_parameter(name).copy_(value)
        return model


def paper_view(params: dict) -> dict:
    """The paper's four quantities from a K = 1 parameter dict with a leading axis R:
    beta (R, d), exp_tau (R,), eta (R, q), nu (R,)."""
    return {
        "beta": params["gate.beta"][:, 0],
        "exp_tau": params["gate.tau"][:, 0].exp(),
        "eta": params["prompts.0.expert.eta"],
        "nu": params["prompts.0.nu"],
    }


def register_resolvers():
    """OmegaConf resolvers used by conf/setting: ${ones_over_sqrt:d}, ${basis:d,i,sign}."""
    if not OmegaConf.has_resolver("ones_over_sqrt"):
        OmegaConf.register_new_resolver("ones_over_sqrt", lambda d: [1 / math.sqrt(int(d))] * int(d))
    if not OmegaConf.has_resolver("basis"):
        OmegaConf.register_new_resolver(
            "basis", lambda d, i, sign=1: [float(sign) if j == int(i) else 0.0 for j in range(int(d))]
        )


register_resolvers()
