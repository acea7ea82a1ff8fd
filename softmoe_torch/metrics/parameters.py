"""The paper's four reported quantities and their errors (Yan et al., NeurIPS 2025, Section 4):
results.csv has a column ``err_<name>`` for each.

A gate without ``beta`` (``ConstantGate``) has no beta to estimate: its error is NaN."""

import torch

from ..model.names import PAPER_NAMES, expert_prefix

PAPER_PARAMS = ("beta", "exp_tau", "eta", "nu")


def paper_view(params: dict) -> dict:
    """The paper's quantities from a K = 1 parameter dict with a leading axis R:
    beta (R, d) (only if the gate has beta), exp_tau (R,), eta (R, q), nu (R,). ``eta`` is the
    prompt expert's parameters, flattened and concatenated in name order (just eta for the
    paper's experts)."""
    tau = params[PAPER_NAMES["tau"]]
    R = tau.shape[0]
    expert = sorted(k for k in params if k.startswith(expert_prefix(0)))
    eta = [params[k].reshape(R, -1) for k in expert]
    view = {"beta": params[PAPER_NAMES["beta"]][:, 0]} if PAPER_NAMES["beta"] in params else {}
    return {
        **view,
        "exp_tau": tau[:, 0].exp(),
        "eta": torch.cat(eta, dim=1) if eta else tau.new_zeros(R, 0),
        "nu": params[PAPER_NAMES["nu"]],
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
