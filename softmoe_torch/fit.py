"""Hydra entry: fit the model of a setting to a user's data file.

    python -m softmoe_torch.fit data=FILE setting=NAME [fit=direct] [init=random] [out=PATH]

Writes a JSON result (beta, tau, eta, nu, their standard errors ``se`` and 95% Wald intervals
``ci95``, loglik, aic, bic, mean_loglik, n_iter, converged, status, seconds) and prints its path;
a prompt expert with parameters other than a single ``eta`` is reported under ``expert`` by its
own parameter names. Bad input gives one line on stderr and exit code 2."""
import json
import warnings
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .cli import UserError, entry, one_line_errors
from .data import INIT_ARRAYS, load_data
from .device import resolve_device, resolve_dtype
from .em import fit_best_of
from .inference import infer, load_params
from .init import near_truth, random_start
from .settings import Setting
from .study import fit_options


def named(values: dict) -> dict:
    """{parameter name: tensor} of one fit -> JSON-ready beta, tau, eta, nu. For K = 1 prompt:
    beta (d,), tau and nu numbers, eta (q,) if the prompt expert's only parameter is eta, else
    ``expert``: {its parameter name: values}; for K > 1 each entry is a list over the prompts."""
    K = values["gate.tau"].numel()
    experts = []
    for k in range(K):
        prefix = f"prompts.{k}.expert."
        experts.append({n[len(prefix):]: v.tolist() for n, v in values.items() if n.startswith(prefix)})
    one = (lambda xs: xs[0]) if K == 1 else (lambda xs: xs)
    out = {"beta": one(values["gate.beta"].tolist()), "tau": one(values["gate.tau"].tolist())}
    if all(list(e) == ["eta"] for e in experts):
        out["eta"] = one([e["eta"] for e in experts])
    else:
        out["expert"] = one(experts)
    out["nu"] = one([values[f"prompts.{k}.nu"].item() for k in range(K)])
    return out


def fit_file(cfg: DictConfig, out_path) -> dict:
    """Fit cfg.setting's model to the file cfg.data; write and return the result dict."""
    setting = Setting(cfg.setting)
    X, y, init_values = load_data(cfg.data, setting.dim)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model = setting.model(dtype=dtype, device=device)
    Xt = torch.as_tensor(X, dtype=dtype, device=device)[None]
    Yt = torch.as_tensor(y, dtype=dtype, device=device)[None]
    policy = cfg.init.policy
    if policy == "near_truth":
        starts = [near_truth(setting.truth(len(y)), 1, float(cfg.init.scale), int(cfg.seed))]
    elif policy == "random":
        starts = [random_start(model, Yt, int(cfg.seed) + i) for i in range(int(cfg.init.n_init))]
    else:
        raise UserError(f"unknown init.policy {policy!r}; use near_truth or random")
    trainable = model.trainable_parameters()
    for name, value in init_values.items():  # arrays in the file override the policy
        if name not in trainable:
            key = next(k for k, v in INIT_ARRAYS.items() if v == name)
            raise UserError(f"{cfg.data}: {key} sets {name}, which this model does not have; remove {key} from the file")
        value = torch.as_tensor(value, dtype=torch.float64)
        if value.numel() != trainable[name].numel():
            raise UserError(f"{cfg.data}: init value for {name} has {value.numel()} entries, expected {trainable[name].numel()}")
        for start in starts:
            start[name] = value.reshape(1, *trainable[name].shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        res = fit_best_of(model, Xt, Yt, starts, fit_options(cfg, dtype))
        inf = infer(load_params(model, res.params, 0), Xt[0], Yt[0])
    result = {
        **named(inf.estimate), "se": named(inf.se), "ci95": {"lower": named(inf.lower), "upper": named(inf.upper)},
        "loglik": inf.loglik, "n_params": inf.n_params, "aic": inf.aic, "bic": inf.bic,
        "mean_loglik": float(res.mean_loglik[0]), "n_iter": int(res.n_iter[0]), "converged": bool(res.converged[0]),
        "status": res.status[0], "seconds": res.seconds, "n": len(y), "setting": setting.name,
        "method": cfg.fit.method, "warnings": [str(w.message) for w in caught],
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    return result


@hydra.main(config_path="../conf", config_name="fit_data", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    out = cfg.out or Path(HydraConfig.get().runtime.output_dir) / "result.json"
    result = fit_file(cfg, out)
    for w in result["warnings"]:
        print(f"warning: {w}")
    print(Path(out).resolve())


if __name__ == "__main__":
    entry(main)
