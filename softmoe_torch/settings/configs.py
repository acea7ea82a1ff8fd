"""Where the packaged Hydra configs live, the OmegaConf resolvers they use, and the check of a
config value that must be a number (``config_number``).

``conf/`` sits at the top level of the repository; a wheel installs it as ``softmoe_torch/conf``.
``register_resolvers()`` must run before a setting's values are read (the entries and ``Setting``
call it); nothing is registered at import."""

import math
from pathlib import Path

from omegaconf import OmegaConf

from ..errors import UserError


def conf_dir() -> Path:
    """The directory holding config.yaml: installed next to the package, else the repository's."""
    package = Path(__file__).resolve().parents[1]
    for d in (package / "conf", package.parent / "conf"):  # a wheel; a source tree or editable install
        if (d / "config.yaml").is_file():
            return d
    raise FileNotFoundError(f"no conf/config.yaml in {package} or {package.parent}; reinstall softmoe_torch")


CONF_DIR = str(conf_dir())

RESOLVERS = {
    "ones_over_sqrt": lambda d: [1 / math.sqrt(int(d))] * int(d),  # ${ones_over_sqrt:d}: (d,) all 1/sqrt(d)
    "basis": lambda d, i, sign=1: [float(sign) if j == int(i) else 0.0 for j in range(int(d))],  # ${basis:d,i,sign}
}


def register_resolvers() -> None:
    """Register RESOLVERS with OmegaConf (idempotent)."""
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def config_number(value, key: str, kind=float, minimum=None):
    """A config value as int or float; UserError naming ``key`` if it is not one (or below minimum)."""
    ok = (
        isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or float(value).is_integer())
    )
    if not ok:
        what = "an integer" if kind is int else "a number"
        raise UserError(f"{key} must be {what}, got {value!r}; write {key}=<{what.split()[-1]}>")
    if minimum is not None and value < minimum:
        raise UserError(f"{key} must be at least {minimum}, got {value!r}")
    return kind(value)
