"""The true parameters of a simulated setting as functions of the sample size n:

    eta*(n) = truth.eta (1 + perturb.eta n^-power),   nu*(n) = truth.nu (1 + perturb.nu n^-power),

the gate's parameters (``truth.beta``, ``truth.tau``, one entry per parameter the gate has) fixed.
``truth.eta`` is the truth of a prompt expert whose only parameter is ``eta``. Any other prompt
expert's truth is (first that is given) ``truth.expert_params`` ({name: value}, every parameter),
its state dict in ``truth.expert_checkpoint``, else its own initialization under
``torch.manual_seed(truth.expert_seed)`` (default 0); perturb.eta then scales all its parameters."""

import torch
from omegaconf import DictConfig

from ..model.names import expert_prefix, variance_name
from .build import build_gate, build_prompt_expert, load_values
from .checkpoints import load_checkpoint


def true_expert(cfg: DictConfig) -> dict:
    """Unperturbed true prompt-expert parameters {name: tensor} of ``cfg`` (a setting node)."""
    t = cfg.truth
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(t.get("expert_seed", 0)))
        expert = build_prompt_expert(cfg)
    if [n for n, _ in expert.named_parameters()] == ["eta"] and t.get("eta") is not None:
        return {"eta": torch.tensor(list(t.eta), dtype=torch.float64)}
    if t.get("expert_params"):
        load_values(expert, t.expert_params, "setting.truth.expert_params")
    elif t.get("expert_checkpoint"):
        load_checkpoint(expert, t.expert_checkpoint, "true prompt expert")
    return {n: p.detach().to(torch.float64) for n, p in expert.named_parameters()}


def true_gate(cfg: DictConfig) -> dict:
    """The gate's true parameters {name: tensor shaped like the parameter} from ``truth.<name>``."""
    out = {}
    for name, param in build_gate(cfg).named_parameters():
        if cfg.truth.get(name) is None:
            raise ValueError(f"setting.truth has no value for the gate's parameter {name}; add setting.truth.{name}")
        value = torch.tensor(cfg.truth[name], dtype=torch.float64).flatten()
        if value.numel() != param.numel():
            raise ValueError(f"setting.truth.{name} has {value.numel()} entries, the gate's {name} has {param.numel()}")
        out[name] = value.reshape(param.shape)
    return out


def true_params(cfg: DictConfig, n: int) -> dict:
    """True trainable parameters of ``cfg`` (a setting node with one prompt) at sample size n:
    {name: tensor}, float64 on CPU, in the order prompt variance, prompt expert, gate."""
    t = cfg.truth
    shrink = float(n) ** (-float(t.perturb.power))
    expert = {k: v * (1 + float(t.perturb.eta) * shrink) for k, v in true_expert(cfg).items()}
    nu = float(t.nu) * (1 + float(t.perturb.nu) * shrink)
    return {
        variance_name(0): torch.tensor(nu, dtype=torch.float64),
        **{f"{expert_prefix(0)}{k}": v for k, v in expert.items()},
        **{f"gate.{k}": v for k, v in true_gate(cfg).items()},
    }
