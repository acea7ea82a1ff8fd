"""What the studies in experiments/ share, written once: launching the run command, measuring a
launched command, reading what a run wrote, composing a setting, drawing data from a changed truth.

A study script (run as ``python experiments/<study>/<script>.py`` from the repository root) imports
this module through a two-line prelude that puts experiments/ on sys.path; no study imports another.

Statistics are not here: error tables come from ``softmoe_torch.study.report.error_table``, slopes
(over a window of sizes too) and the Wilson interval from ``softmoe_torch.metrics``. Nothing heavy is imported at module level: benchmark's numpy/scipy peer workers import this
module and must not load torch.
"""

import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository root


# ----------------------------------------------------------------------------- launching


def run_command(overrides: list, *, run_dir=None, sweep_dir=None) -> list:
    """argv of the public run command ``python -m softmoe_torch.run``: one run into ``run_dir``, or a
    Hydra multirun (``-m``) into ``sweep_dir``, one numbered job folder per combination."""
    if (run_dir is None) == (sweep_dir is None):
        raise ValueError("give exactly one of run_dir and sweep_dir")
    if run_dir is not None:
        return [sys.executable, "-m", "softmoe_torch.run", *overrides, f"hydra.run.dir={run_dir}"]
    return [
        sys.executable,
        "-m",
        "softmoe_torch.run",
        "-m",
        *overrides,
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweep.subdir=${hydra:job.num}",
    ]


def launch(cmd: list, log=None, env=None) -> int:
    """Run ``cmd`` from the repository root, its output appended to ``log`` (a path) or shown; the exit code."""
    if log is None:
        return subprocess.call(cmd, cwd=ROOT, env=env)
    with open(log, "a") as fh:
        return subprocess.call(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)


# Runs a command and writes its wall seconds, exit code and peak RSS (wait4) as JSON; being small
# and started afresh, its child's ru_maxrss does not include the caller's memory.
LAUNCHER = """import json, os, subprocess, sys, time
out, log, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]


def tree_rss_kib(root):
    # resident KiB summed over root and its descendants (Linux /proc), sampled
    parent, rss = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                parent[int(entry)], rss[int(entry)] = int(fields[1]), int(fields[21]) * os.sysconf("SC_PAGE_SIZE") // 1024
            except (OSError, IndexError, ValueError):
                pass
    tree, grew = {root}, True
    while grew:
        new = {p for p, pp in parent.items() if pp in tree} - tree
        tree, grew = tree | new, bool(new)
    return sum(rss.get(p, 0) for p in tree)


with open(log, "w") as fh:
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    peak = 0
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if os.path.isdir("/proc"):
            peak = max(peak, tree_rss_kib(child.pid))
        time.sleep(0.5)
    wall = time.perf_counter() - t0
child.returncode = os.waitstatus_to_exitcode(status)
with open(out, "w") as fh:
    json.dump({"wall_seconds": wall, "returncode": child.returncode, "maxrss": usage.ru_maxrss, "tree_kib": peak}, fh)
"""


def measured(cmd: list, log) -> dict:
    """Run ``cmd`` through LAUNCHER from the repository root, its output to ``log``: wall_seconds,
    returncode, maxrss (the largest process's ru_maxrss, KiB on Linux) and tree_kib (resident
    memory summed over the command's processes, sampled every 0.5 s)."""
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "usage.json"
        subprocess.run([sys.executable, "-c", LAUNCHER, str(record), str(log), *cmd], cwd=ROOT, check=True)
        return json.loads(record.read_text())


def load_average() -> list:
    """The 1, 5 and 15 minute load averages, as `uptime` shows them."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return list(os.getloadavg())


def study_module(script: str, name: str):
    """Module ``name`` (<name>.py) from the folder of ``script`` (a study's own file), loaded by its path:
    a study's scripts share code within the study folder this way, never across studies."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(script).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- reading runs


def read_results(run_dir) -> list:
    """The rows (dicts of strings) of a run folder's results.csv; [] if it has none yet."""
    path = Path(run_dir) / "results.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def read_overrides(job_dir) -> dict:
    """A job's command-line overrides (its .hydra/overrides.yaml) as {key: value}, '+'/'~' dropped
    from the keys; a deletion ('~key') has the value None."""
    import yaml

    pairs = yaml.safe_load((Path(job_dir) / ".hydra" / "overrides.yaml").read_text())
    return dict(p.lstrip("+~").split("=", 1) if "=" in p else (p.lstrip("+~"), None) for p in pairs)


def fmt(s: dict | None) -> str:
    """A slope dict (slope, ci_low, ci_high) as '-0.50 [-0.52, -0.48]'; '—' for None."""
    return "—" if s is None else f"{s['slope']:+.2f} [{s['ci_low']:+.2f}, {s['ci_high']:+.2f}]"


# ----------------------------------------------------------------------------- settings and data


def compose(overrides=(), config_name: str = "config"):
    """The Hydra config ``config_name`` of conf/ with ``overrides`` (the resolvers registered)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from softmoe_torch.settings.configs import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))


def setting_of(name: str, *overrides):
    """The ``Setting`` of conf/setting/<name>.yaml, with more overrides if given."""
    from softmoe_torch.settings.setting import Setting

    return Setting(compose([f"setting={name}", *overrides]).setting)


def model_with(setting, n: int, truth: dict | None):
    """The setting's true model at n with the parameters in ``truth`` ({name: value}) replaced."""
    import torch

    model = setting.true_model(n)
    with torch.no_grad():
        for name, value in (truth or {}).items():
            param = model.get_parameter(name)
            param.copy_(torch.as_tensor(value, dtype=param.dtype).expand_as(param))
    return model


def response(model, X, generator, null: bool):
    """y (n,) at X (n, d): from the frozen component alone (H0) or from the whole model."""
    import torch

    f0 = model.pretrained
    with torch.no_grad():
        return (
            f0.density.sample(f0.mean(X), f0.nu.expand(X.shape[0]), generator)
            if null
            else model.sample(X, generator=generator)
        )
