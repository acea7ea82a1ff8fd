import os
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")

torch.set_num_threads(min(2, os.cpu_count() or 1))


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
