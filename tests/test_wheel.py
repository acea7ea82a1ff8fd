"""A non-editable wheel carries conf/ and every module, and runs both entries from any folder (about 30 s)."""

import csv
import json
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import ROOT


def sh(*args, cwd=None, env=None):
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_installed_wheel_runs_a_sweep_and_a_fit_from_another_folder(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "softmoe_torch", src / "softmoe_torch", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "conf", src / "conf")
    shutil.copytree(ROOT / "hydra_plugins", src / "hydra_plugins", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src)
    (wheel,) = (tmp_path / "dist").glob("softmoe_torch-*.whl")
    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    # torch and the rest from this interpreter's site-packages (a virtual environment's, where the tests run in
    # one; --system-site-packages would give the base interpreter's), added after the venv's own by a .pth
    # file, whose lines do not run that folder's .pth files (so no editable install of the project shadows the wheel)
    venv_site = sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (Path(venv_site) / "test_parent_env.pth").write_text("\n".join(ours) + "\n")
    sh(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel)

    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    where = sh(
        python,
        "-c",
        "import softmoe_torch.settings.configs as c; print(c.__file__); print(c.CONF_DIR)",
        cwd=work,
        env=env,
    )
    site = str(venv / "lib")
    assert all(line.startswith(site) for line in where.split()), where  # the wheel's copy, not a source tree

    # every module of the source tree is in the wheel (a subpackage missing from pyproject's list would not be)
    modules = sorted(m.name for m in pkgutil.walk_packages([str(ROOT / "softmoe_torch")], "softmoe_torch."))
    sh(python, "-c", f"import importlib; [importlib.import_module(m) for m in {modules!r}]", cwd=work, env=env)

    sh(
        python,
        "-m",
        "softmoe_torch.run",
        "setting=distinguishable",
        "sweep=tiny",
        "fit=direct",
        "progress=false",
        "monitor.tensorboard=false",
        "hydra.run.dir=run",
        cwd=work,
        env=env,
    )
    with open(work / "run" / "results.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 4

    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 8))
    np.savez(work / "d.npz", X=X, y=np.tanh(X[:, 0]) + 0.03 * rng.standard_normal(400))
    sh(
        python,
        "-m",
        "softmoe_torch.fit",
        "data=d.npz",
        "setting=distinguishable",
        "fit=direct",
        "out=r.json",
        cwd=work,
        env=env,
    )
    result = json.loads((work / "r.json").read_text())
    assert result["n"] == 400 and len(result["beta"]) == 8
