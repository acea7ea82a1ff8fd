import os
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")

torch.set_num_threads(min(2, os.cpu_count() or 1))
# float64 by default for every test, however it is run: the models the tests build take their parameters'
# dtype from it (SoftmaxGate's beta, tau, an expert's eta, and through it a component's nu; 0.16 in float32 is
# 0.1599999964), so a test's data and truth otherwise depended on whether test_modules.py, which set it at
# import, had been collected before it (alone, test_moe's sibling data differed by 2.6e-8)
torch.set_default_dtype(torch.float64)


@pytest.fixture
def one_thread():
    """One intra-op thread: far faster for small problems on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides, config_name='config') -> DictConfig via Hydra's compose API."""

    def _compose(overrides=(), config_name="config"):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides))

    return _compose


def run_cli(module, *args, cwd=ROOT, timeout=600):
    """Run `python -m module args...` as a user would; returns CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
