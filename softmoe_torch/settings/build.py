"""Build the modules a ``setting`` config node describes: experts, densities and the gate by
``_target_``, the frozen pre-trained component from its known values, the whole mixture."""

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..errors import module_name, one_line
from ..model.mixture import Component, ContaminatedMoE
from .checkpoints import load_checkpoint, load_torchscript
from .module_checks import check_experts


def instantiate_node(node, what: str, **kwargs):
    """``hydra.utils.instantiate(node, **kwargs)``; ValueError (one line) naming ``what`` on any failure."""
    try:
        return instantiate(node, **kwargs)
    except Exception as err:  # hydra wraps import and argument errors; keep the message to one line
        raise ValueError(f"cannot build the {what} from {OmegaConf.to_container(node)}: {one_line(err)}") from None


def load_values(module, values, key: str):
    """Load ``values`` (a config node {parameter name: value}, every parameter) into ``module``
    as float64; ValueError (one line) naming the config ``key`` when they do not fit."""
    given = OmegaConf.to_container(values, resolve=True) if OmegaConf.is_config(values) else dict(values)
    try:
        module.load_state_dict({k: torch.as_tensor(v, dtype=torch.float64) for k, v in given.items()})
    except (RuntimeError, TypeError, ValueError) as err:  # a shape, a name, or a value that is no number
        raise ValueError(f"{key} do not fit {module_name(module)}: {one_line(err)}") from None


def build_pretrained(cfg: DictConfig) -> Component:
    """The frozen pre-trained component of ``cfg`` (a setting node) with its known parameters, from
    (first that is given) ``pretrained.torchscript`` (a TorchScript file), ``.checkpoint`` (a state
    dict for ``.expert``) or ``.params`` (values for its parameters); an expert with parameters
    needs one of them."""
    p = cfg.pretrained
    if p.get("torchscript"):
        expert = load_torchscript(p.torchscript, "pre-trained expert").to(torch.float64)
    else:
        expert = instantiate_node(p.expert, "pre-trained expert").to(torch.float64)
        if p.get("checkpoint"):
            load_checkpoint(expert, p.checkpoint, "pre-trained expert")
        elif p.get("params"):
            load_values(expert, p.params, "setting.pretrained.params")
        elif any(True for _ in expert.parameters()):
            names = ", ".join(n for n, _ in expert.named_parameters())
            raise ValueError(
                f"the pre-trained expert {module_name(expert)} has parameters ({names}) but no known values: "
                "a pre-trained expert is frozen and fully known; give setting.pretrained.checkpoint, .torchscript "
                "or .params"
            )
    return Component(expert, instantiate_node(p.density, "pre-trained density"), nu=float(p.nu), frozen=True)


def build_prompt_expert(cfg: DictConfig):
    """A fresh prompt expert of ``cfg`` (a setting node), float64."""
    return instantiate_node(cfg.prompt.expert, "prompt expert").to(torch.float64)


def build_gate(cfg: DictConfig):
    """The gate of ``cfg`` (a setting node, ``gate._target_``), float64."""
    return instantiate_node(cfg.gate, "gate").to(torch.float64)


def build_model(cfg: DictConfig, n_prompts: int, dtype=torch.float64, device="cpu") -> ContaminatedMoE:
    """A fresh mixture of ``cfg`` (a setting node): frozen pre-trained component, ``n_prompts``
    prompts, the gate; checked by ``check_experts``. Built in float64 (so that nu0 = 0.001 is
    exact), then cast to ``dtype``."""
    prompts = [
        Component(build_prompt_expert(cfg), instantiate_node(cfg.prompt.density, "prompt density"))
        for _ in range(n_prompts)
    ]
    model = ContaminatedMoE(build_pretrained(cfg), prompts, build_gate(cfg)).to(dtype=dtype, device=device)
    check_experts(model, int(cfg.dim))
    return model
