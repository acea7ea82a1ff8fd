"""End to end through the real command on tiny sweeps."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TINY = ["sweep=tiny", "fit=direct", "progress=false"]


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_tiny_run_writes_every_output_and_resumes(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("softmoe_torch.run", *TINY, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(out / "results.csv")
    assert len(rows) == 4 and {int(r["n"]) for r in rows} == {500, 1000}
    assert all(r["status"] == "converged" for r in rows)
    assert all(float(r[f"err_{p}"]) >= 0 for r in rows for p in ("beta", "exp_tau", "eta", "nu"))
    slopes = json.loads((out / "slopes.json").read_text())
    assert set(slopes["params"]) == {"beta", "exp_tau", "eta", "nu"}
    for s in slopes["params"].values():
        assert {"slope", "ci_low", "ci_high", "theory", "paper", "verdict"} <= set(s)
        assert s["ci_low"] <= s["slope"] <= s["ci_high"] or s["ci_low"] <= s["ci_high"]
    assert (out / "figure.png").stat().st_size > 10_000 and (out / "figure.pdf").exists()
    assert "| beta |" in (out / "report.md").read_text()
    assert "slopes for distinguishable" in proc.stdout
    acc = EventAccumulator(str(out / "tensorboard")).Reload()
    tags = acc.Tags()
    assert {"error/beta", "error/nu", "batch/seconds", "hparam/slope_eta"} <= set(
        tags["scalars"]
    )  # slope/ needs 3 sizes
    assert "figure" in tags["images"]

    again = run_cli("softmoe_torch.run", *TINY, f"hydra.run.dir={out}")
    assert again.returncode == 0, again.stderr
    assert "0 fits to run, 4 already done" in again.stdout
    assert read_rows(out / "results.csv") == rows


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the parent-death signal is Linux's")
def test_worker_processes_give_the_same_fits_and_a_killed_sweep_leaves_none_behind(tmp_path):
    """workers=2 fits the sample sizes in worker processes, a large one cut in two: the rows equal
    those of one process (but for the seconds). SIGKILL of the sweep takes its workers with it (Linux)."""
    args = ["sweep.reps=2", "sweep.sizes=[300,400,500,60000]", "fit=em", "progress=false"]  # 60000: cut in two
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        proc = run_cli("softmoe_torch.run", *args, f"workers={workers}", f"hydra.run.dir={out}")
        assert proc.returncode == 0, proc.stderr
        runs[workers] = sorted((r for r in read_rows(out / "results.csv")), key=lambda r: (int(r["n"]), int(r["rep"])))
        for r in runs[workers]:
            r.pop("seconds")
    assert "in 2 worker processes" in proc.stdout
    assert runs[1] == runs[2]

    big = [
        "sweep.reps=40",
        "sweep.n_min=20000",
        "sweep.n_max=100000",
        "fit=em",
        "workers=2",
        "progress=false",
        "monitor.tensorboard=false",
        f"hydra.run.dir={tmp_path / 'killed'}",
    ]
    main = subprocess.Popen(
        [sys.executable, "-m", "softmoe_torch.run", *big],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline, workers = time.time() + 60, []
    while len(workers) < 2 and time.time() < deadline:  # the spawned workers (and multiprocessing's helper)
        time.sleep(0.5)
        workers = children(main.pid)
    assert len(workers) >= 2, workers
    main.send_signal(signal.SIGKILL)
    main.wait()
    deadline = time.time() + 15
    while any(alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in workers if alive(pid)}
    assert not left


def children(pid: int) -> list:
    """Pids whose parent is pid (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie awaiting its reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_traces_are_logged_when_asked(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "softmoe_torch.run",
        *TINY,
        "sweep.reps=1",
        "sweep.sizes=[300,400]",
        "monitor.trace=true",
        f"hydra.run.dir={out}",
    )
    assert proc.returncode == 0, proc.stderr
    tags = EventAccumulator(str(out / "tensorboard")).Reload().Tags()["scalars"]
    assert "trace/n400_rep0" in tags


def test_default_run_dir_is_the_same_for_the_same_command(tmp_path):
    args = [*TINY, "sweep.reps=1", "sweep.sizes=[300,600]", "setting=nondistinguishable_eta"]
    first = run_cli("softmoe_torch.run", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_cli("softmoe_torch.run", *args, cwd=tmp_path)
    assert "0 fits to run, 2 already done" in second.stdout


def test_multirun_over_settings(tmp_path):
    proc = run_cli(
        "softmoe_torch.run",
        "-m",
        "setting=distinguishable,nondistinguishable_nu",
        *TINY,
        "sweep.reps=1",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("distinguishable", "nondistinguishable_nu"):
        assert len(list(tmp_path.glob(f"{name}/**/results.csv"))) == 1


def test_interrupted_run_keeps_a_valid_file_and_resumes(tmp_path):
    """Ctrl-C while the fits at n = 700 run (the 6th of 12 sizes, sent by the process to itself
    through a plug-in expert, so no timer races the sweep): the 10 fits of the sizes before are
    kept in a valid file, and the same command resumes with the 14 others."""
    out = tmp_path / "run"
    args = [
        "fit=direct",
        "progress=false",
        "sweep.reps=2",
        "sweep.sizes=[200,300,400,500,600,700,800,900,1000,1100,1200,1300]",
        "setting.prompt.expert._target_=interrupting_expert.InterruptingTanhExpert",
        f"hydra.run.dir={out}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    # Ctrl-C's default disposition in the child: a shell's background job inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler
    proc = subprocess.run(
        [sys.executable, "-m", "softmoe_torch.run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "INTERRUPT_AT_N": "700"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    partial = read_rows(out / "results.csv")
    assert len(partial) == 10 and {(int(r["n"]), int(r["rep"])) for r in partial} == {
        (n, r) for n in range(200, 700, 100) for r in (0, 1)
    }
    assert proc.returncode == 130 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"interrupted: kept 10 finished fits in {out / 'results.csv'}; run the same command again to resume"
    ]
    done = subprocess.run(
        [sys.executable, "-m", "softmoe_torch.run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "14 fits to run, 10 already done" in done.stdout
    rows = read_rows(out / "results.csv")
    assert len({(r["n"], r["rep"]) for r in rows}) == len(rows) == 24
    assert [r for r in rows if int(r["n"]) < 700] == partial  # the kept fits are not redone


@pytest.mark.parametrize(
    "override,message",
    [
        ("setting=nope", "Could not find 'setting/nope'"),
        ("sweep.reps=0", "error: sweep.reps must be at least 1"),
        ("fit.method=adam", "error: fit.method must be one of em, direct, newton"),
        ("device=cuda:7", "error:"),
    ],
)
def test_bad_override_is_a_clear_error(tmp_path, override, message):
    proc = run_cli("softmoe_torch.run", *TINY, override, f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_joblib_launcher_runs_settings_in_parallel(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    proc = run_cli(
        "softmoe_torch.run",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "setting=distinguishable,nondistinguishable_eta",
        *TINY,
        "sweep.reps=1",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list(tmp_path.glob("*/**/results.csv"))) == 2


def test_resuming_with_another_configuration_is_refused(tmp_path):
    out = tmp_path / "run"
    first = run_cli("softmoe_torch.run", *TINY, "sweep.reps=1", f"hydra.run.dir={out}")
    assert first.returncode == 0, first.stderr
    other = run_cli("softmoe_torch.run", *TINY, "sweep.reps=1", "init.scale=0.2", f"hydra.run.dir={out}")
    assert other.returncode == 2
    assert "holds results of another configuration (different init)" in other.stderr
