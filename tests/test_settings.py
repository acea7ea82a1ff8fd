"""Settings inherit one base, choose the gate by _target_, compute their truth once per n; the
package's layers import only downwards; resolvers are registered by a call, not on import."""
import ast
import csv
import json
import math
import subprocess
import sys

import pytest
import yaml
from omegaconf.errors import MissingMandatoryValue

import softmoe_torch.settings as settings_module
from conftest import ROOT, run_cli
from softmoe_torch.settings import Setting

SETTINGS = sorted(p for p in (ROOT / "conf" / "setting").glob("*.yaml") if not p.stem.startswith("_"))
CONSTANT_GATE = ["setting.gate._target_=softmoe_torch.gates.ConstantGate", "~setting.gate.dim"]

# building blocks -> mixture -> estimator -> study -> faces: a module imports only its own layer or below
LAYERS = {
    **dict.fromkeys(["densities", "experts", "gates"], 0),
    "mixture": 1,
    **dict.fromkeys(["params", "convergence", "objective", "optim", "acceleration", "em", "init", "inference", "results", "device",
                     "estimator"], 2),
    **dict.fromkeys(["configs", "errors", "checkpoints", "module_checks", "build", "truth", "paper",
                     "settings", "simulate", "workers", "metrics", "distance", "fit_diagnostics", "study", "report", "monitor", "progress", "cli"], 3),
    **dict.fromkeys(["data", "run", "fit", "__init__"], 4),
}


@pytest.mark.parametrize("path", SETTINGS, ids=lambda p: p.stem)
def test_packaged_settings_extend_the_base(path):
    assert yaml.safe_load(path.read_text())["defaults"] == ["_base", "_self_"]


def test_the_base_alone_is_not_a_setting(compose_cfg):
    with pytest.raises(MissingMandatoryValue):
        Setting(compose_cfg(["setting=_base"]).setting)


def test_the_gate_is_chosen_by_target(compose_cfg):
    setting = Setting(compose_cfg(["setting=nondistinguishable_eta", *CONSTANT_GATE]).setting)
    assert type(setting.model().gate).__name__ == "ConstantGate"
    assert set(setting.truth(1000)) == {"prompts.0.nu", "prompts.0.expert.eta", "gate.tau"}
    three = Setting(compose_cfg(["setting.n_prompts=3"]).setting).model()
    assert three.gate.beta.shape == (3, 8) and len(three.prompts) == 3
    with pytest.raises(ValueError, match="shape .16, 2. for 1 prompt"):
        Setting(compose_cfg(["setting.gate.n_prompts=2"]).setting).model()


def test_truth_is_computed_once_per_sample_size(compose_cfg, monkeypatch):
    calls = []
    true_params = settings_module.true_params
    monkeypatch.setattr(settings_module, "true_params", lambda cfg, n: calls.append(n) or true_params(cfg, n))
    setting = Setting(compose_cfg(["setting=nondistinguishable_eta"]).setting)
    first = setting.truth(1000)
    first["gate.tau"].fill_(5.0)  # the caller's copy: the cached truth stays
    setting.true_model(1000)
    assert float(setting.truth(1000)["gate.tau"]) == 1.0 and calls == [1000]
    setting.truth(2000)
    assert calls == [1000, 2000]


def test_sweep_with_a_constant_gate_reports_no_beta(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("softmoe_torch.run", "setting=nondistinguishable_eta", *CONSTANT_GATE, "sweep=tiny", "fit=direct",
                   "progress=false", "monitor.tensorboard=false", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and all(r["status"] == "converged" for r in rows)
    assert all(math.isnan(float(r["err_beta"])) and math.isfinite(float(r["err_eta"])) for r in rows)
    assert list(json.loads((out / "slopes.json").read_text())["params"]) == ["exp_tau", "eta", "nu"]


def test_resolvers_are_registered_by_a_call_not_on_import():
    code = ("import importlib, pkgutil; from omegaconf import OmegaConf; import softmoe_torch as p\n"
            "for m in pkgutil.iter_modules(p.__path__): importlib.import_module('softmoe_torch.' + m.name)\n"
            "assert not OmegaConf.has_resolver('basis')\n"
            "from softmoe_torch.configs import register_resolvers; register_resolvers()\n"
            "assert OmegaConf.has_resolver('basis') and OmegaConf.has_resolver('ones_over_sqrt')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def package_imports() -> dict:
    """{module: set of package modules it imports (anywhere in its body)}."""
    graph = {}
    for path in (ROOT / "softmoe_torch").glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                deps.add(node.module.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("softmoe_torch."):
                deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("softmoe_torch.")}
        graph[path.stem] = deps
    return graph


def test_modules_import_only_their_layer_or_below_and_without_cycles():
    graph = package_imports()
    unplaced = sorted(set(graph) - set(LAYERS))
    assert not unplaced, f"place the new modules {unplaced} in a layer of LAYERS"
    upward = [(m, d) for m, deps in graph.items() for d in deps if LAYERS[d] > LAYERS[m]]
    assert not upward, f"imports from a higher layer: {upward}"

    def reach(start, seen):
        for d in graph[start] - seen:
            seen.add(d)
            reach(d, seen)
        return seen

    cycles = sorted(m for m in graph if m in reach(m, set()))
    assert not cycles, f"modules on an import cycle: {cycles}"
