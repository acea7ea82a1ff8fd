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
from conftest import ROOT, run_cli
from omegaconf.errors import MissingMandatoryValue

import softmoe_torch.settings.setting as setting_module
from softmoe_torch.settings.setting import Setting

SETTINGS = sorted((ROOT / "conf" / "setting").glob("*.yaml"))
CONSTANT_GATE = ["setting.gate._target_=softmoe_torch.model.gates.ConstantGate", "~setting.gate.dim"]

# The package's units (its folders and top-level modules) by layer, from the bottom: a unit imports
# only units of a lower layer (the faces may also use each other), and no module is on an import cycle.
LAYERS = {
    **dict.fromkeys(["errors", "model"], 0),
    "estimation": 1,
    "metrics": 2,  # measures of error: below settings and study
    "settings": 3,
    **dict.fromkeys(["study", "lrt"], 4),
    **dict.fromkeys(["cli", "data", "run", "fit", "bootstrap_test", "test", "__init__"], 5),  # the faces
}
FACES = 5


@pytest.mark.parametrize("path", SETTINGS, ids=lambda p: p.stem)
def test_packaged_settings_extend_the_base(path):
    """Contaminated settings extend the shared base; a mixture of experts (kind: moe) and the
    regression study's base (kind: regression) stand alone, the study's other truths extend that."""
    config = yaml.safe_load(path.read_text())
    if config.get("kind") == "moe":
        assert "defaults" not in config and {"component", "gate", "n_components"} <= set(config)
    elif config.get("kind") == "regression":
        assert "defaults" not in config and {"expert", "gate", "n_experts", "truth"} <= set(config)
    elif path.stem.startswith("sigmoid_moe_"):
        assert config["defaults"] == ["sigmoid_moe", "_self_"] and set(config) == {
            "defaults",
            "name",
            "truth",
            "published_slopes",
        }
    else:
        assert config["defaults"] == ["/base/setting@_here_", "_self_"]


def test_the_base_alone_is_not_a_setting(compose_cfg):
    with pytest.raises(MissingMandatoryValue):
        Setting(compose_cfg(["+base=setting"]).base)


@pytest.mark.parametrize("group", ["setting", "fit"])
def test_the_listing_of_choices_offers_no_base(tmp_path, group):
    proc = run_cli("softmoe_torch.run", f"{group}=nonexistent", f"hydra.run.dir={tmp_path}")
    listing = proc.stderr[
        proc.stderr.index(f"Available options in '{group}'") : proc.stderr.index("Config search path")
    ]
    choices = listing.split()[4:]
    assert "distinguishable" in choices or "newton" in choices
    assert not [c for c in choices if "base" in c], listing


def test_the_gate_is_chosen_by_target(compose_cfg):
    setting = Setting(compose_cfg(["setting=nondistinguishable_eta", *CONSTANT_GATE]).setting)
    assert type(setting.model().gate).__name__ == "ConstantGate"
    assert set(setting.truth(1000)) == {"prompts.0.nu", "prompts.0.expert.eta", "gate.tau"}
    three = Setting(compose_cfg(["setting.n_prompts=3"]).setting).model()
    assert three.gate.beta.shape == (3, 8) and len(three.prompts) == 3
    with pytest.raises(ValueError, match="shape .16, 2. for 2 components"):
        Setting(compose_cfg(["setting.gate.n_prompts=2"]).setting).model()


def test_truth_is_computed_once_per_sample_size(compose_cfg, monkeypatch):
    calls = []
    true_params = setting_module.true_params
    monkeypatch.setattr(setting_module, "true_params", lambda cfg, n: calls.append(n) or true_params(cfg, n))
    setting = Setting(compose_cfg(["setting=nondistinguishable_eta"]).setting)
    first = setting.truth(1000)
    first["gate.tau"].fill_(5.0)  # the caller's copy: the cached truth stays
    setting.true_model(1000)
    assert float(setting.truth(1000)["gate.tau"]) == 1.0 and calls == [1000]
    setting.truth(2000)
    assert calls == [1000, 2000]


def test_sweep_with_a_constant_gate_reports_no_beta(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "softmoe_torch.run",
        "setting=nondistinguishable_eta",
        *CONSTANT_GATE,
        "sweep=tiny",
        "fit=direct",
        "progress=false",
        "monitor.tensorboard=false",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and all(r["status"] == "converged" for r in rows)
    assert all(math.isnan(float(r["err_beta"])) and math.isfinite(float(r["err_eta"])) for r in rows)
    assert list(json.loads((out / "slopes.json").read_text())["params"]) == ["exp_tau", "eta", "nu"]


def test_resolvers_are_registered_by_a_call_not_on_import():
    code = (
        "import importlib, pkgutil; from omegaconf import OmegaConf; import softmoe_torch as p\n"
        "for m in pkgutil.walk_packages(p.__path__, 'softmoe_torch.'): importlib.import_module(m.name)\n"
        "assert not OmegaConf.has_resolver('basis')\n"
        "from softmoe_torch.settings.configs import register_resolvers; register_resolvers()\n"
        "assert OmegaConf.has_resolver('basis') and OmegaConf.has_resolver('ones_over_sqrt')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def package_imports() -> dict:
    """{module: set of package modules it imports (anywhere in its body)}, modules by dotted name
    under softmoe_torch (``study.sweep``; a package's ``__init__`` as ``study``, the top one as
    ``__init__``)."""
    pkg = ROOT / "softmoe_torch"
    modules = {}
    for path in pkg.rglob("*.py"):
        parts = list(path.relative_to(pkg).with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_init else parts) or "__init__"
        modules[name] = (path, parts[:-1])  # the package that a relative import starts from
    graph = {}
    for name, (path, package) in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - node.level + 1]
                targets = [base + node.module.split(".")] if node.module else [base + [a.name] for a in node.names]
                deps |= {".".join(t) for t in targets}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("softmoe_torch."):
                deps.add(node.module.removeprefix("softmoe_torch."))
            elif isinstance(node, ast.Import):
                deps |= {
                    a.name.removeprefix("softmoe_torch.") for a in node.names if a.name.startswith("softmoe_torch.")
                }
        graph[name] = {d for d in deps if d in modules} | {d.rsplit(".", 1)[0] for d in deps if d not in modules}
    return graph


def unit(module: str) -> str:
    return module.split(".")[0]


def test_units_import_only_lower_layers_and_no_module_is_on_a_cycle():
    graph = package_imports()
    unplaced = sorted({unit(m) for m in graph} - set(LAYERS))
    assert not unplaced, f"place the new units {unplaced} in a layer of LAYERS"
    unknown = sorted({d for deps in graph.values() for d in deps} - set(graph))
    assert not unknown, f"imports of no module of the package: {unknown}"

    def allowed(m, d):
        a, b = unit(m), unit(d)
        return a == b or LAYERS[b] < LAYERS[a] or LAYERS[a] == LAYERS[b] == FACES

    upward = sorted((m, d) for m, deps in graph.items() for d in deps if not allowed(m, d))
    assert not upward, f"imports of a unit not below: {upward}"

    def reach(start, seen):
        for d in graph[start] - seen:
            seen.add(d)
            reach(d, seen)
        return seen

    cycles = sorted(m for m in graph if m in reach(m, set()))
    assert not cycles, f"modules on an import cycle: {cycles}"
