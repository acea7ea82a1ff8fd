"""The checks of a sweep's configuration, all before the first fit: every value a number where a
number is due (``config_number``), the sample sizes, the fit options, the init policy; ``validate``
gives the checked ``Plan``. (``config_number`` itself lives with the configs, in
``softmoe_torch.settings.configs``, so that a setting checks its own values.) Each problem is a one-line
UserError naming the key."""

from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import UserError
from ..estimation.device import resolve_device, resolve_dtype
from ..estimation.driver import FitOptions
from ..estimation.params import ParamSpace
from ..settings.configs import config_number
from ..settings.setting import load_setting


def sample_sizes(sweep: DictConfig) -> list:
    """The sweep's sample sizes: ``sizes`` if given, else ``num_sizes`` log-spaced integers;
    at least two distinct sizes of at least 2 (a slope needs two)."""
    if sweep.get("sizes"):
        sizes = sorted({config_number(n, "sweep.sizes", int, 2) for n in sweep.sizes})
    else:
        lo, hi = config_number(sweep.n_min, "sweep.n_min", int, 2), config_number(sweep.n_max, "sweep.n_max", int, 2)
        num = config_number(sweep.num_sizes, "sweep.num_sizes", int, 1)
        if lo > hi:
            raise UserError(f"sweep.n_min={lo} is above sweep.n_max={hi}; swap them")
        sizes = sorted({int(round(n)) for n in np.logspace(np.log10(lo), np.log10(hi), num)})
    if len(sizes) < 2:
        raise UserError(
            f"the sweep has one sample size ({sizes[0]}) and a slope needs two; "
            "set sweep.num_sizes=2 or more (with n_min < n_max) or sweep.sizes=[n1,n2,...]"
        )
    return sizes


STRING_KEYS = (
    "fit.method",
    "fit.mstep",
    "fit.rule",
    "fit.accelerate",
    "fit.indefinite",
    "setting.fit.indefinite",
    "fit.compile",
)


def _check_fit_values(node, key: str):
    """Every leaf of the fit config other than the named choices and switches must be a number,
    a list of numbers or null."""
    if isinstance(node, dict):
        for k, v in node.items():
            _check_fit_values(v, f"{key}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_fit_values(v, f"{key}[{i}]")
    elif node is not None and not isinstance(node, bool) and key not in STRING_KEYS:
        config_number(
            node, key, int if key.endswith(("max_iter", "max_ls", "squarem_after", "anderson_depth")) else float
        )


COMPILE_MIN_SAMPLES = 2_000_000  # fit.compile=auto compiles sweeps on the CPU of at least this many samples x starts


def compile_choice(value, auto: bool) -> bool:
    """``fit.compile``: true, false, or 'auto' (then ``auto``); a UserError (one line) otherwise."""
    if isinstance(value, bool):
        return value
    if value == "auto":
        return auto
    raise UserError(f"fit.compile must be true, false or auto, got {value!r}")


def fit_options(cfg: DictConfig, dtype, compile_auto: bool = False) -> FitOptions:
    """FitOptions from the ``fit`` config group, with the options a setting needs (``setting.fit``,
    if it has any: its own parameter box, its Newton variant) replacing the group's (``bounds``
    entry by entry); float32 gets looser tolerances. ``fit.compile=auto`` becomes ``compile_auto``."""
    f = OmegaConf.to_container(cfg.fit, resolve=True)
    f["compile"] = compile_choice(f.get("compile", "auto"), compile_auto)
    _check_fit_values(f, "fit")
    if cfg.setting.get("fit"):
        own = OmegaConf.to_container(cfg.setting.fit, resolve=True)
        _check_fit_values(own, "setting.fit")
        f.update({k: v for k, v in own.items() if k != "bounds"})
        if own.get("bounds"):
            f["bounds"] = {**(f.get("bounds") or {}), **own["bounds"]}
    if dtype == torch.float32:
        f["tol"], f["gtol"] = max(f.get("tol", 0), 1e-5), max(f.get("gtol", 0), 1e-5)
        inner = f.setdefault("inner", {})
        inner["ftol"], inner["gtol"] = max(inner.get("ftol", 0), 1e-7), max(inner.get("gtol", 0), 1e-5)
    try:
        return FitOptions(**f)
    except TypeError as err:  # an unknown key
        raise UserError(f"bad fit options: {err}; see conf/fit/*.yaml for the keys") from None


def init_options(cfg: DictConfig) -> dict:
    """The ``init`` group's options with those the setting needs (``setting.init``, if any) replacing them."""
    own = cfg.setting.get("init")
    return {**OmegaConf.to_container(cfg.init, resolve=True), **(OmegaConf.to_container(own) if own else {})}


@dataclass
class Plan:
    """A sweep's validated configuration: everything a fit needs, checked before the first one."""

    setting: object  # a setting handle (settings.setting.load_setting)
    device: torch.device
    dtype: torch.dtype
    opts: FitOptions
    sizes: list
    reps: list
    model: torch.nn.Module
    hellinger_points: int
    workers: int | None  # None: auto (see worker_count)


def validate(cfg: DictConfig) -> Plan:
    """Check the whole sweep configuration (setting, device, dtype, fit, init, sweep, seed); a
    problem is a one-line UserError naming the key, raised before anything is fitted or written."""
    setting = load_setting(cfg.setting)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    config_number(cfg.seed, "seed", int)
    reps = list(range(config_number(cfg.sweep.reps, "sweep.reps", int, 1)))
    sizes = sample_sizes(cfg.sweep)
    init = init_options(cfg)
    if init["policy"] == "near_truth":
        config_number(init["scale"], "init.scale", float, 0)
        config_number(init.get("power", 0.0), "init.power", float, 0)
        config_number(init.get("n_init", 1), "init.n_init", int, 1)
    elif init["policy"] == "random":
        config_number(init["n_init"], "init.n_init", int, 1)
    else:
        raise UserError(f"unknown init.policy {init['policy']!r} for a sweep; use init=near_truth or init=random")
    work = sum(sizes) * len(reps) * int(init.get("n_init", 1))  # samples x starts
    opts = fit_options(cfg, dtype, compile_auto=device.type == "cpu" and work >= COMPILE_MIN_SAMPLES)
    if opts.compile and device.type != "cpu":
        raise UserError(f"fit.compile=true is for the CPU; this sweep runs on {device.type} (set fit.compile=false)")
    model = setting.model(dtype=dtype, device=device)
    ParamSpace(model, opts.bounds)  # bad bounds fail here, not at the first fit
    setting.truth(sizes[0])  # a setting without a truth fails here, in one line, not per batch
    points = config_number(cfg.get("hellinger_points", 0), "hellinger_points", int, 0)
    workers = cfg.get("workers", "auto")
    workers = None if workers == "auto" else config_number(workers, "workers", int, 1)
    return Plan(setting, device, dtype, opts, sizes, reps, model, points, workers)
