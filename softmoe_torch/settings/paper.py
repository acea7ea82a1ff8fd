"""Which of the paper's four quantities a setting's model has, and their plot labels (the errors
themselves are ``softmoe_torch.metrics.parameters``).

A gate without ``beta`` (``ConstantGate``) has no beta to estimate: its ``err_beta`` is NaN in
every row and the report leaves beta out (no slope, no panel)."""

from omegaconf import DictConfig

from ..metrics.parameters import PAPER_PARAMS, paper_view, param_errors  # noqa: F401 (param_errors, paper_view: the old path, kept for one release)
from .build import build_gate

LABELS = {
    "beta": r"$\|\hat\beta-\beta^*\|$",
    "exp_tau": r"$|\exp(\hat\tau)-\exp(\tau^*)|$",
    "eta": r"$\|\hat\eta-\eta^*\|$",
    "nu": r"$|\hat\nu-\nu^*|$",
}


def reported_params(cfg: DictConfig) -> tuple:
    """The PAPER_PARAMS that the model of ``cfg`` (a setting node) reports: all four, or no beta
    for a gate without one."""
    gate = dict(build_gate(cfg).named_parameters())
    return tuple(p for p in PAPER_PARAMS if p != "beta" or "beta" in gate)
