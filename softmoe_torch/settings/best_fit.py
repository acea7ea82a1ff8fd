"""The best fit of a misspecified regression mixture: the reference G_bar of the least-squares papers'
loss D3 (Nguyen, Ho & Rinaldo, NeurIPS 2024, arXiv 2405.13997: a fit whose model does not contain the
truth converges to the model's best approximation of the true regression function, and D3 measures the
distance to it). G_bar = argmin over the fitted model of mean (f_G(x) - f*(x))^2 over ``points`` fixed
x (no noise), found by Levenberg-Marquardt from k* starts (the truth's atoms plus a copy of atom c,
c = 0..k*-1: the study's start with each choice of the copy), the one of smallest residual kept. It
is computed once and kept on disk (``cache_dir``), keyed by everything it depends on."""

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

import torch

from ..estimation.driver import FitOptions
from ..estimation.ls_driver import fit_least_squares
from .configs import config_number
from .regression_truths import near_truth_start

DEFAULTS = {"points": 20000, "seed": 20250103, "scale": 0.05, "max_iter": 1000, "gtol": 1.0e-10}
KINDS = {"points": (int, 1), "seed": (int, 0), "scale": (float, 0), "max_iter": (int, 1), "gtol": (float, 0)}
VERSION = 1  # raise when the computation changes, so that older files are not read


def options(given: dict) -> dict:
    """``given`` (``setting.best_fit``) over DEFAULTS, each checked as KINDS says (type, least value);
    an unknown key or a bad value is a one-line ValueError."""
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"setting.best_fit takes {', '.join(DEFAULTS)}, not {', '.join(unknown)}")
    merged = {**DEFAULTS, **given}
    return {k: config_number(merged[k], f"setting.best_fit.{k}", *KINDS[k]) for k in DEFAULTS}


def cache_dir() -> Path:
    """Where computed references are kept: $SOFTMOE_CACHE, else $XDG_CACHE_HOME/softmoe_torch, else
    ~/.cache/softmoe_torch."""
    if os.environ.get("SOFTMOE_CACHE"):
        return Path(os.environ["SOFTMOE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "softmoe_torch"


def project(model, gate: str, truth, inputs, options: dict) -> dict:
    """G_bar of ``model`` (k* + 1 experts under ``gate``, float64) for ``truth`` (k* experts) on x = inputs(points,
    generator): {"params": {name: tensor}, "rss": mean squared residual, "status": the fit's stop,
    "starts": k*}."""
    k = len(truth.experts)
    x = inputs(int(options["points"]), torch.Generator().manual_seed(int(options["seed"])))
    with torch.no_grad():
        y = truth(x)
    per_copy = [
        near_truth_start(truth, gate, int(options["seed"]) + c, float(options["scale"]), copy=c) for c in range(k)
    ]
    start = {name: torch.stack([s[name] for s in per_copy]) for name in per_copy[0]}
    opts = FitOptions(method="lm", tol=1e-15, gtol=float(options["gtol"]), max_iter=int(options["max_iter"]))
    fit = fit_least_squares(model, x.expand(k, *x.shape), y.expand(k, *y.shape), [start], opts, [0] * k)
    best = int(torch.argmax(torch.nan_to_num(fit.mean_loglik, nan=-torch.inf)))
    with torch.no_grad():
        fitted = torch.func.functional_call(model, {n: v[best] for n, v in fit.params.items()}, (x,))
    return {
        "params": {n: v[best].detach().clone() for n, v in fit.params.items()},
        "rss": float(((fitted - y) ** 2).mean()),
        "status": fit.status[best],
        "starts": k,
    }


def kept_path(key: dict) -> Path:
    """Where the reference keyed by ``key`` (JSON-able) is kept: a hash of key and VERSION under cache_dir."""
    text = json.dumps({**key, "version": VERSION}, sort_keys=True)
    return cache_dir() / "best_fits" / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.pt"


def cached_projection(key: dict, compute) -> dict | None:
    """``compute()`` kept on disk under ``kept_path(key)``, computed once; written whole or not at
    all, so that processes sharing the file never read half of one. ``compute`` None: the kept
    value, or None where none is kept (nothing is computed)."""
    path = kept_path(key)
    if path.exists():
        return torch.load(path, weights_only=True)
    if compute is None:
        return None
    print(f"the misspecified model's best fit (G_bar): computing it once, kept in {path}", file=sys.stderr, flush=True)
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(value, tmp)
        os.replace(tmp, path)
    except OSError as err:  # a read-only cache: the value still serves this process
        warnings.warn(f"could not keep the best fit in {path} ({err.strerror}); set SOFTMOE_CACHE to a writable folder")
    return value
