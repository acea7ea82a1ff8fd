"""The paper's naming: its four reported quantities (results.csv has a column ``err_<name>`` for
each), their errors, and which of them a setting's model has.

A gate without ``beta`` (``ConstantGate``) has no beta to estimate: its ``err_beta`` is NaN in
every row and the report leaves beta out (no slope, no panel)."""
import torch
from omegaconf import DictConfig

from .build import build_gate

PAPER_PARAMS = ("beta", "exp_tau", "eta", "nu")
LABELS = {
    "beta": r"$\|\hat\beta-\beta^*\|$",
    "exp_tau": r"$|\exp(\hat\tau)-\exp(\tau^*)|$",
    "eta": r"$\|\hat\eta-\eta^*\|$",
    "nu": r"$|\hat\nu-\nu^*|$",
}


def paper_view(params: dict) -> dict:
    """The paper's quantities from a K = 1 parameter dict with a leading axis R:
    beta (R, d) (only if the gate has beta), exp_tau (R,), eta (R, q), nu (R,). ``eta`` is the
    prompt expert's parameters, flattened and concatenated in name order (just eta for the
    paper's experts)."""
    R = params["gate.tau"].shape[0]
    expert = sorted(k for k in params if k.startswith("prompts.0.expert."))
    eta = [params[k].reshape(R, -1) for k in expert]
    view = {"beta": params["gate.beta"][:, 0]} if "gate.beta" in params else {}
    return {
        **view,
        "exp_tau": params["gate.tau"][:, 0].exp(),
        "eta": torch.cat(eta, dim=1) if eta else params["gate.tau"].new_zeros(R, 0),
        "nu": params["prompts.0.nu"],
    }


def param_errors(estimate: dict, truth: dict) -> dict:
    """Per-replication errors of the paper's four quantities, each (R,):
    ||beta_hat - beta*||, |exp(tau_hat) - exp(tau*)|, ||eta_hat - eta*||, |nu_hat - nu*|
    (NaN for a quantity the model does not have). ``estimate`` {name: (R, ...)}; ``truth``
    {name: tensor} without the replication axis."""
    est = paper_view(estimate)
    tru = paper_view({k: v.unsqueeze(0).to(next(iter(estimate.values()))) for k, v in truth.items()})
    R = est["nu"].shape[0]
    out = {}
    for key in PAPER_PARAMS:
        if key not in est:
            out[key] = est["nu"].new_full((R,), float("nan"))
            continue
        out[key] = (est[key] - tru[key]).reshape(R, -1).norm(dim=1)
    return out


def reported_params(cfg: DictConfig) -> tuple:
    """The PAPER_PARAMS that the model of ``cfg`` (a setting node) reports: all four, or no beta
    for a gate without one."""
    gate = dict(build_gate(cfg).named_parameters())
    return tuple(p for p in PAPER_PARAMS if p != "beta" or "beta" in gate)
