"""Hydra entry: fit the model of a setting to a user's data file.

    python -m softmoe_torch.fit data=FILE setting=NAME [fit=newton] [init.n_init=10] [out=PATH]

The setting names the frozen pre-trained component and the prompt family (or, for a setting of
``kind: moe``, the family of every component); d is the data's; the start is random (best of
``init.n_init``) unless the file holds init_* arrays.
Writes a JSON result (beta, tau, eta, nu, their standard errors ``se`` and 95% Wald intervals
``ci95``; for a mixture of experts, ``estimates``, ``se`` and ``ci95`` by parameter name; loglik, aic, bic,
mean_loglik, n_iter, converged, status, seconds, ``degenerate``: why
the fit is a spike on a few observations, [] if it is not) and prints its path; a prompt expert
with parameters other than a single ``eta`` is reported under ``expert`` by its own parameter names.
Bad input gives one line on stderr and exit code 2."""

import json
import warnings
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from .cli import entry, one_line_errors
from .data import INIT_ARRAYS, load_data
from .errors import UserError
from .estimation.device import keep_freed_memory, resolve_device, resolve_dtype
from .estimation.estimator import Estimator
from .model.mixture import ContaminatedMoE
from .model.names import PAPER_NAMES, expert_prefix, variance_name
from .model.regression import RegressionMoE
from .settings.configs import CONF_DIR, config_number, register_resolvers
from .settings.setting import load_setting
from .study.config_checks import fit_options, init_options


def named(values: dict) -> dict:
    """{parameter name: tensor} of one fit -> JSON-ready beta, tau, eta, nu. For K = 1 prompt:
    beta (d,), tau and nu numbers, eta (q,) if the prompt expert's only parameter is eta, else
    ``expert``: {its parameter name: values}; for K > 1 each entry is a list over the prompts."""
    K = values[PAPER_NAMES["tau"]].numel()
    experts = []
    for k in range(K):
        prefix = expert_prefix(k)
        experts.append({n[len(prefix) :]: v.tolist() for n, v in values.items() if n.startswith(prefix)})
    one = (lambda xs: xs[0]) if K == 1 else (lambda xs: xs)
    out = {"beta": one(values[PAPER_NAMES["beta"]].tolist()), "tau": one(values[PAPER_NAMES["tau"]].tolist())}
    if all(list(e) == ["eta"] for e in experts):
        out["eta"] = one([e["eta"] for e in experts])
    else:
        out["expert"] = one(experts)
    out["nu"] = one([values[variance_name(k)].item() for k in range(K)])
    return out


def build_estimator(cfg: DictConfig, model, truth: dict | None = None, policy: str | None = None) -> Estimator:
    """The estimator that cfg's ``fit``, ``init`` (its policy unless ``policy`` is given), ``seed``,
    ``device`` and ``dtype`` describe."""
    options = fit_options(cfg, resolve_dtype(cfg.dtype, resolve_device(cfg.device)))
    policy = policy or cfg.init.policy
    subsample = cfg.init.get("subsample") if policy == "random" and not isinstance(model, RegressionMoE) else None
    return Estimator(
        model,
        init=policy,
        n_init=int(cfg.init.get("n_init", 1)),
        seed=int(cfg.seed),
        truth=truth,
        init_scale=float(cfg.init.get("scale", 0.1)),
        device=cfg.device,
        dtype=cfg.dtype,
        options=options,
        subsample=None if subsample is None else config_number(subsample, "init.subsample", int, 1),
    )


def fit_file(cfg: DictConfig, out_path) -> dict:
    """Fit cfg.setting's model to the file cfg.data; write and return the result dict (and keep
    the ``FitResults`` under the key ``results``, not written)."""
    X, y, init_values = load_data(cfg.data)
    cfg.setting.dim = X.shape[1]  # d is the data's
    setting = load_setting(cfg.setting)
    model = setting.model()
    policy = cfg.init.policy
    starts = "the file's init_* arrays" if init_values else None
    own = getattr(setting, "starting_points", None) if policy == "near_truth" else None
    if own is not None:  # the setting's own near-truth start (a regression setting's: the study's), under the file's
        near = own(init_options(cfg), len(y), [0], lambda i, j: int(cfg.seed))[0]
        init_values = {**{k: v[0].numpy() for k, v in near.items()}, **init_values}
        starts = starts or f"{setting.name}'s near-truth start"
        policy = "random"  # replaced whole by that start
    truth = setting.truth(len(y)) if policy == "near_truth" else None
    estimator = build_estimator(cfg, model, truth=truth, policy=policy)
    trainable = model.trainable_parameters()
    for name, value in init_values.items():  # arrays in the file override the policy
        if name not in trainable:
            key = next(k for k, v in INIT_ARRAYS.items() if v == name)
            raise UserError(
                f"{cfg.data}: {key} sets {name}, which this model does not have; remove {key} from the file"
            )
        if np.size(value) != trainable[name].numel():
            raise UserError(
                f"{cfg.data}: init value for {name} has {np.size(value)} entries, expected {trainable[name].numel()}"
            )
        init_values[name] = np.reshape(value, tuple(trainable[name].shape))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")  # torch's own, on import
        res = estimator.fit(X, y, start=init_values or None)
        se, (lower, upper) = res.se(), _pair(res.conf_int())
    if isinstance(model, ContaminatedMoE):
        params = {**named(res.estimates()), "se": named(se), "ci95": {"lower": named(lower), "upper": named(upper)}}
    else:
        params = {
            "estimates": _lists(res.estimates()),
            "se": _lists(se),
            "ci95": {"lower": _lists(lower), "upper": _lists(upper)},
        }
    result = {
        **params,
        "loglik": float(res.loglik[0]),
        "n_params": res.n_params,
        "aic": float(res.aic[0]),
        "bic": float(res.bic[0]),
        "mean_loglik": float(res.mean_loglik[0]),
        "n_iter": int(res.n_iter[0]),
        "converged": bool(res.converged[0]),
        "status": res.status[0],
        "seconds": res.seconds,
        "n": len(y),
        "setting": setting.name,
        "method": cfg.fit.method,
        "solver": res.solver,
        "starts": starts or _policy_starts(estimator, policy, len(y)),
        "degenerate": res.degenerate[0],
        "warnings": [str(w.message) for w in caught],
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    return {**result, "results": res}


def _policy_starts(estimator: Estimator, policy: str, n: int) -> str:
    """What the result's starts were, in words."""
    text = f"best of {estimator.n_init} {policy} start(s)"
    s = estimator.subsample
    return text + (f", each first fitted on {s} of the {n} samples drawn at random" if s and n > 2 * s else "")


def _lists(values: dict) -> dict:
    return {k: v.tolist() for k, v in values.items()}


def _pair(intervals: dict):
    return {k: v[0] for k, v in intervals.items()}, {k: v[1] for k, v in intervals.items()}


@hydra.main(config_path=CONF_DIR, config_name="fit_data", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    register_resolvers()
    keep_freed_memory()
    result = fit_file(cfg, cfg.out)
    contaminated = isinstance(result["results"].spec, ContaminatedMoE)
    frozen = "the pre-trained component is frozen" if contaminated else "every component is trainable"
    print(f"{result['setting']} (d = {cfg.setting.dim}): fitted from {result['starts']}; {frozen}")
    print(result["results"].summary())
    for w in result["warnings"]:
        print(f"warning: {w}")
    print(Path(cfg.out).resolve())


if __name__ == "__main__":
    entry(main)
