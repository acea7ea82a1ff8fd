"""An experiment setting: the frozen pre-trained component, the prompt family, and the true
parameters as functions of the sample size n (DESIGN.md section 2).

Any ``nn.Module`` mapping x (n, d) to means (n,) can be an expert; ``check_experts`` turns the
usual plug-in mistakes into one-line ``ValueError``s."""
import math

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .gates import SoftmaxGate
from .mixture import Component, ContaminatedMoE

PAPER_PARAMS = ("beta", "exp_tau", "eta", "nu")


def _one_line(err: Exception) -> str:
    """An exception's message with its lines joined (hydra's chained cause where there is one)."""
    lines = [ln.strip() for ln in str(err.__cause__ or err).splitlines()]
    text = " ".join(ln for ln in lines if ln and not ln.startswith("full_key:"))
    return text or err.__class__.__name__


def _instantiate(cfg, what: str):
    try:
        return instantiate(cfg)
    except Exception as err:  # hydra wraps import and argument errors; keep the message to one line
        raise ValueError(f"cannot build the {what} from {OmegaConf.to_container(cfg)}: {_one_line(err)}") from None


def _name(module) -> str:
    return getattr(module, "original_name", None) or type(module).__qualname__


def load_checkpoint(module, path, what: str):
    """Load a state dict saved by ``torch.save(net.state_dict(), path)`` into ``module`` (strict,
    ``torch.load(weights_only=True)``); returns the module."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(state, strict=True)
    except Exception as err:
        raise ValueError(f"cannot load the {what} checkpoint {path} into {_name(module)}: {_one_line(err)}") from None
    return module


def load_torchscript(path, what: str):
    """A module saved by ``torch.jit.save`` (scripted or traced), on the CPU."""
    try:
        return torch.jit.load(path, map_location="cpu")
    except Exception as err:
        raise ValueError(f"cannot load the {what} TorchScript file {path}: {_one_line(err)}") from None


def check_experts(model: ContaminatedMoE, dim: int, n: int = 16) -> None:
    """Evaluate every expert on a probe batch x (n, dim) ~ N(0, I), plain and under ``torch.vmap``
    (the fit driver needs both); ValueError unless each returns finite means of shape (n,)."""
    ref = next(model.parameters())
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(ref)
    named = [("pre-trained expert", model.pretrained.expert)]
    named += [(f"prompt expert {k}", p.expert) for k, p in enumerate(model.prompts)]
    for role, expert in named:
        what = f"the {role} {_name(expert)}"
        try:
            with torch.no_grad():
                out = expert(x)
        except Exception as err:
            raise ValueError(f"{what} failed on x of shape {tuple(x.shape)}: {_one_line(err)}") from None
        if not isinstance(out, torch.Tensor) or out.shape != (n,):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{what} must map x of shape ({n}, {dim}) to means of shape ({n},), got {got}")
        if not torch.isfinite(out).all():
            raise ValueError(f"{what} returned non-finite means (NaN or inf) on x ~ N(0, I)")
        try:
            with torch.no_grad():
                torch.vmap(expert)(x[None])
        except Exception as err:
            raise ValueError(f"{what} does not run under torch.vmap, which fitting needs: {_one_line(err)}") from None


class Setting:
    """Wraps a ``setting`` config node. Truth at sample size n (one prompt):
    eta* = eta * (1 + perturb.eta * n^-power), nu* = nu * (1 + perturb.nu * n^-power).

    ``eta`` is the truth of a prompt expert whose only parameter is ``eta``. Any other prompt
    expert's truth is its state dict in ``truth.expert_checkpoint`` if given, else its own
    initialization under ``torch.manual_seed(truth.expert_seed)`` (default 0); perturb.eta then
    scales all its parameters. ``n_prompts`` (default 1) is the number K of prompts."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.dim = int(cfg.dim)
        self.n_prompts = int(cfg.get("n_prompts", 1))
        if self.n_prompts < 1:
            raise ValueError(f"setting.n_prompts must be at least 1, got {self.n_prompts}")

    def pretrained(self) -> Component:
        """The frozen pre-trained component with its known parameters, from (first that is given)
        ``torchscript`` (a TorchScript file), ``checkpoint`` (a state dict for ``expert``) or
        ``params`` (values for ``expert``'s parameters); an expert with parameters needs one."""
        p = self.cfg.pretrained
        if p.get("torchscript"):
            expert = load_torchscript(p.torchscript, "pre-trained expert").to(torch.float64)
        else:
            expert = _instantiate(p.expert, "pre-trained expert").to(torch.float64)
            if p.get("checkpoint"):
                load_checkpoint(expert, p.checkpoint, "pre-trained expert")
            elif p.get("params"):
                try:
                    expert.load_state_dict({k: torch.as_tensor(v, dtype=torch.float64) for k, v in p.params.items()})
                except RuntimeError as err:
                    raise ValueError(f"setting.pretrained.params do not fit {_name(expert)}: {_one_line(err)}") from None
            elif any(True for _ in expert.parameters()):
                names = ", ".join(n for n, _ in expert.named_parameters())
                raise ValueError(
                    f"the pre-trained expert {_name(expert)} has parameters ({names}) but no known values: a pre-trained "
                    "expert is frozen and fully known; give setting.pretrained.checkpoint, .torchscript or .params"
                )
        return Component(expert, _instantiate(p.density, "pre-trained density"), nu=float(p.nu), frozen=True)

    def model(self, dtype=torch.float64, device="cpu") -> ContaminatedMoE:
        """A fresh mixture: frozen pre-trained component, ``n_prompts`` prompts, softmax gate;
        its experts are checked by ``check_experts``. Built in float64 (so that nu0 = 0.001 is
        exact), then cast to ``dtype``."""
        pr = self.cfg.prompt
        prompts = [
            Component(_instantiate(pr.expert, "prompt expert").to(torch.float64), _instantiate(pr.density, "prompt density"))
            for _ in range(self.n_prompts)
        ]
        gate = SoftmaxGate(self.dim, self.n_prompts).to(torch.float64)
        model = ContaminatedMoE(self.pretrained(), prompts, gate).to(dtype=dtype, device=device)
        check_experts(model, self.dim)
        return model

    def _true_expert(self) -> dict:
        """Unperturbed true prompt-expert parameters {name: tensor} (see the class docstring)."""
        t = self.cfg.truth
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(t.get("expert_seed", 0)))
            expert = _instantiate(self.cfg.prompt.expert, "prompt expert")
        if [n for n, _ in expert.named_parameters()] == ["eta"] and t.get("eta") is not None:
            return {"eta": torch.tensor(list(t.eta), dtype=torch.float64)}
        if t.get("expert_checkpoint"):
            load_checkpoint(expert, t.expert_checkpoint, "true prompt expert")
        return {n: p.detach().to(torch.float64) for n, p in expert.named_parameters()}

    def truth(self, n: int) -> dict:
        """True trainable parameters at sample size n: {name: tensor}, float64 on CPU."""
        if self.n_prompts != 1:
            raise ValueError(
                f"setting.truth describes one prompt, not setting.n_prompts={self.n_prompts}: "
                "simulated sweeps (run) need n_prompts=1; to fit data use init=random"
            )
        t = self.cfg.truth
        shrink = float(n) ** (-float(t.perturb.power))
        expert = {k: v * (1 + float(t.perturb.eta) * shrink) for k, v in self._true_expert().items()}
        nu = float(t.nu) * (1 + float(t.perturb.nu) * shrink)
        return {
            "prompts.0.nu": torch.tensor(nu, dtype=torch.float64),
            **{f"prompts.0.expert.{k}": v for k, v in expert.items()},
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
    beta (R, d), exp_tau (R,), eta (R, q), nu (R,). ``eta`` is the prompt expert's parameters,
    flattened and concatenated in name order (just eta for the paper's experts)."""
    R = params["gate.tau"].shape[0]
    expert = sorted(k for k in params if k.startswith("prompts.0.expert."))
    eta = [params[k].reshape(R, -1) for k in expert]
    return {
        "beta": params["gate.beta"][:, 0],
        "exp_tau": params["gate.tau"][:, 0].exp(),
        "eta": torch.cat(eta, dim=1) if eta else params["gate.tau"].new_zeros(R, 0),
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
