"""Where the packaged Hydra configs live, and the OmegaConf resolvers they use.

``conf/`` sits at the top level of the repository; a wheel installs it as ``softmoe_torch/conf``.
``register_resolvers()`` must run before a setting's values are read (the entries and ``Setting``
call it); nothing is registered at import."""
import math
from pathlib import Path

from omegaconf import OmegaConf


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
