"""The sweep launcher for real: `hydra/launcher=slurm` on a local single-node SLURM cluster
(experiments/slurm/local_cluster.sh), plus the thread rule for SLURM jobs.

The cluster tests need a running local cluster or root to start one (CI: .ci/run starts it);
elsewhere they skip with the reason. Every wait is bounded, and jobs a test leaves behind are
cancelled, so a broken cluster fails a test instead of hanging it."""

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from softmoe_torch.estimation.device import match_threads_to_job

CLUSTER = ROOT / "experiments" / "slurm" / "local_cluster.sh"
SETTINGS = ["distinguishable", "nondistinguishable_eta"]
# one CPU and 1 GB per job: both array tasks run at once on a 2-core runner
SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]


# ---------------------------------------------------------------- thread rule (no cluster needed)


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_torch_threads_follow_slurm_cpus(restore_threads):
    assert match_threads_to_job({"SLURM_CPUS_PER_TASK": "1"}) == 1
    assert torch.get_num_threads() == 1


def test_explicit_omp_threads_win_and_outside_slurm_nothing_changes(restore_threads):
    torch.set_num_threads(2)
    assert match_threads_to_job({"SLURM_CPUS_PER_TASK": "1", "OMP_NUM_THREADS": "2"}) is None
    assert match_threads_to_job({}) is None
    assert match_threads_to_job({"SLURM_CPUS_PER_TASK": "bogus"}) is None
    assert torch.get_num_threads() == 2


def test_a_job_without_result_is_described_in_one_line():
    describe_uncompleted = pytest.importorskip(
        "hydra_plugins.softmoe_torch_slurm.slurm_launcher", reason="needs the launchers extra"
    ).describe_uncompleted
    message = (
        "Job 17 (task: 0) with path /x/.submitit/17/17_0_result.pkl\n"
        "has not produced any output (state: CANCELLED by 0)\nError stream produced:\nsrun: ..."
    )
    line = describe_uncompleted(message)
    assert line.startswith(
        "SLURM job 17 ended without a result (state: CANCELLED by 0); its log: /x/.submitit/17/17_0_log.err."
    )
    assert "\n" not in line
    assert describe_uncompleted("something else\nmore") == "something else"


# ---------------------------------------------------------------- the cluster


def _cluster(cmd, timeout):
    return subprocess.run(["bash", str(CLUSTER), cmd], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running local cluster: reused if up, else started (root only) and stopped afterwards."""
    if shutil.which("sinfo") and _cluster("status", 30).returncode == 0:
        yield
        return
    if os.geteuid() != 0:
        pytest.skip(f"SLURM tests skipped: no local cluster running and not root to start one (sudo {CLUSTER} up)")
    try:
        up = _cluster("up", 600)
    except subprocess.TimeoutExpired:
        pytest.skip(f"SLURM tests skipped: {CLUSTER.name} up took over 10 minutes")
    if up.returncode != 0:
        reason = (up.stderr.strip().splitlines() or ["no message"])[-1]
        pytest.skip(f"SLURM tests skipped: the local cluster cannot start: {reason}")
    yield
    _cluster("down", 120)


def _env(**extra):
    # jobs inherit this environment (sbatch --export=ALL): they import this checkout's package
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def _multirun(sweep_dir, *overrides, launcher=SLURM):
    return [
        sys.executable,
        "-m",
        "softmoe_torch.run",
        "-m",
        *launcher,
        *overrides,
        "progress=false",
        f"hydra.sweep.dir={sweep_dir}",
    ]


def _job_ids(sweep_dir):
    """SLURM job ids of a sweep from submitit's folders: array tasks (12_0, 12_1) or a lone job (12)."""
    names = {p.name for p in (Path(sweep_dir) / ".submitit").glob("*") if p.is_dir()}
    tasks = {n for n in names if "_" in n}
    return sorted(tasks | {n for n in names - tasks if not any(t.startswith(n + "_") for t in tasks)})


def _states(job_ids, wait: float = 30.0):
    """job id -> accounting state (sacct), e.g. {'12_0': 'COMPLETED'}; '?' for a job accounting
    does not know. slurmdbd records a finished job a moment after it ends, so this asks again
    (up to ``wait`` s) while a job is unknown or still pending or running."""
    deadline = time.monotonic() + wait
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(j.split("_")[0] for j in job_ids)],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
        found = {j: states.get(j, "?").split()[0] for j in job_ids}
        if not set(found.values()) & {"?", "PENDING", "RUNNING"} or time.monotonic() > deadline:
            return found
        time.sleep(1)


def _report(label, sweep_dir):
    states = _states(_job_ids(sweep_dir))
    print(f"\n{label}: " + ", ".join(f"job {j} {s}" for j, s in states.items()))
    return states


def _cancel(sweep_dir):
    ids = _job_ids(sweep_dir)
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)


def _run(cmd, timeout, sweep_dir, **env):
    """Run a multirun to completion or `timeout` s (then its jobs are cancelled and the test fails)."""
    try:
        return subprocess.run(cmd, cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        _cancel(sweep_dir)
        pytest.fail(f"multirun did not finish within {timeout}s: {' '.join(cmd)}")


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _results(sweep_dir, setting):
    """The one results.csv of `setting` in a sweep (multirun/<setting>/<overrides>/results.csv)."""
    found = list((Path(sweep_dir) / setting).glob("*/results.csv"))
    assert len(found) == 1, f"expected one results.csv under {sweep_dir}/{setting}, found {found}"
    return found[0]


def _job_logs(sweep_dir, newest=False):
    """The jobs' stdout (submitit's *_log.out); newest=True: only the last submitted job's."""
    logs = sorted((Path(sweep_dir) / ".submitit").rglob("*_log.out"), key=lambda p: int(p.name.split("_")[0]))
    return "".join(p.read_text() for p in (logs[-1:] if newest else logs))


@pytest.mark.slurm
def test_slurm_multirun_equals_a_local_run(slurm_cluster, tmp_path):
    tiny = [f"setting={','.join(SETTINGS)}", "sweep=tiny", "fit=direct"]
    start = time.perf_counter()
    proc = _run(_multirun(tmp_path / "slurm", *tiny), 300, tmp_path / "slurm")
    slurm_s = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    states = _report("slurm multirun", tmp_path / "slurm")
    assert list(states.values()) == ["COMPLETED"] * 2, states
    # the job's torch used its one CPU (SLURM_CPUS_PER_TASK), as the local run below does
    assert _job_logs(tmp_path / "slurm").count("torch threads: 1 (SLURM_CPUS_PER_TASK)") == 2

    start = time.perf_counter()
    local = _run(_multirun(tmp_path / "local", *tiny, launcher=[]), 300, tmp_path / "local", OMP_NUM_THREADS="1")
    local_s = time.perf_counter() - start
    assert local.returncode == 0, local.stderr[-3000:]
    print(f"wall time: slurm {slurm_s:.1f} s, local (sequential) {local_s:.1f} s, load {os.getloadavg()[0]:.2f}")

    for setting in SETTINGS:
        got = _rows(_results(tmp_path / "slurm", setting))
        want = _rows(_results(tmp_path / "local", setting))
        assert len(got) == 4
        # same thread count, same seeds: bit-identical apart from the timing column
        assert [{k: v for k, v in r.items() if k != "seconds"} for r in got] == [
            {k: v for k, v in r.items() if k != "seconds"} for r in want
        ]


# a sweep whose first rows come fast and whose rest takes long enough to be killed mid-run
KILLABLE = [
    "setting=distinguishable",
    "sweep=tiny",
    "fit=direct",
    "sweep.sizes=[1000,100000,150000,200000,250000,300000]",
]


def _wait_for_rows(results, proc, timeout):
    """Wait until results.csv has rows while the launcher still waits; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and len(_rows(results)) >= 2:
            return True
        time.sleep(0.2)
    return False


def _assert_one_line_error(stderr, job, state):
    """The launcher ends with one line naming the job, its state, its log and how to resume."""
    line = (stderr.strip().splitlines() or [""])[-1]
    print("launcher's error:", line)
    assert "Traceback" not in stderr, stderr[-3000:]
    assert line.startswith(f"error: SLURM job {job} ended without a result (state: {state}"), stderr[-3000:]
    assert "rerun the same command to resume" in line
    assert Path(re.search(r"its log: (\S+)\.", line).group(1)).exists()


def _assert_resumes(cmd, sweep_dir, results, rows_before, n_total):
    """Rerun the same command: it does only the missing fits and completes results.csv."""
    again = _run(cmd, 300, sweep_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    _report("rerun", sweep_dir)
    counts = re.findall(r"(\d+) fits to run, (\d+) already done", _job_logs(sweep_dir, newest=True))
    assert counts == [(str(n_total - rows_before), str(rows_before))], counts
    keys = [(int(r["n"]), int(r["rep"])) for r in _rows(results)]
    assert len(keys) == len(set(keys)) == n_total


# scancel (SIGTERM, ignored by submitit, then SIGKILL after KillWait) ends the job as -s KILL does, a
# KillWait later: the default suite kills by -s KILL, `-m slow` by scancel as well
@pytest.mark.slurm
@pytest.mark.parametrize("how", [pytest.param("scancel", marks=pytest.mark.slow), "sigkill"])
def test_killed_job_fails_clearly_and_a_rerun_finishes_it(slurm_cluster, tmp_path, how):
    sweep_dir = tmp_path / "multirun"
    cmd = _multirun(sweep_dir, *KILLABLE)
    results = (
        sweep_dir
        / "distinguishable"
        / "fit=direct,sweep.sizes=[1000,100000,150000,200000,250000,300000],sweep=tiny"
        / "results.csv"
    )
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for_rows(results, proc, 240), "the job finished or failed before it could be killed"
        job = _job_ids(sweep_dir)
        # scancel: SIGTERM (ignored by submitit), SIGKILL after KillWait; -s KILL: SIGKILL at once
        subprocess.run(["scancel", *(["-s", "KILL"] if how == "sigkill" else []), *job], check=True, timeout=30)
        _, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        _cancel(sweep_dir)
        pytest.fail("the launcher still waited 180 s after its job was killed")
    finally:
        if proc.poll() is None:
            proc.kill()
            _cancel(sweep_dir)
    states = _report(f"killed by {how}", sweep_dir)
    assert proc.returncode != 0
    assert list(states.values())[0] in ("CANCELLED", "FAILED"), states
    _assert_one_line_error(err, job[0], list(states.values())[0])
    rows_before = len(_rows(results))
    assert 2 <= rows_before < 12
    _assert_resumes(cmd, sweep_dir, results, rows_before, 12)


# slow: a job cannot be cut by its time limit in under about 90 s (a limit of 1 minute, enforced within
# ~30 s); the one-line message it ends with is describe_uncompleted's, tested above without a cluster
@pytest.mark.slow
@pytest.mark.slurm
def test_job_past_its_time_limit_fails_clearly_and_a_rerun_resumes(slurm_cluster, tmp_path):
    # 200 sizes x 2 reps at n=1e5..2e5 by EM: minutes of work on any machine, so the 1-minute limit
    # (enforced by slurmctld within ~30 s, then SIGKILL after KillWait) always cuts it mid-run
    sweep_dir = tmp_path / "multirun"
    big = [
        "setting=distinguishable",
        "sweep=tiny",
        "fit=em",
        "sweep.n_min=100000",
        "sweep.n_max=200000",
        "sweep.num_sizes=200",
    ]
    # signal_delay_s=0: Slurm sends submitit's USR2 that long before the limit (to within 60 s); with
    # the default 120 s it would come at once and submitit would end the job as "timed-out" itself
    limited = ["hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=0"]
    first = _run(_multirun(sweep_dir, *big, *limited), 300, sweep_dir)
    states = _report("past its time limit", sweep_dir)
    assert first.returncode != 0
    assert list(states.values()) == ["TIMEOUT"], states
    _assert_one_line_error(first.stderr, _job_ids(sweep_dir)[0], "TIMEOUT")
    results = _results(sweep_dir, "distinguishable")
    rows_before = len(_rows(results))
    assert 2 <= rows_before < 400

    # the rerun (same overrides, longer limit) resumes from the rows on disk; finishing it would take
    # minutes, and finishing after a SIGKILL is what the kill tests check, so stop it once it has
    # reported its resume point and added a row
    cmd = _multirun(sweep_dir, *big, "hydra.launcher.timeout_min=10")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(_rows(results)) <= rows_before + 1 and proc.poll() is None:
            time.sleep(0.5)
        counts = re.findall(r"(\d+) fits to run, (\d+) already done", _job_logs(sweep_dir, newest=True))
        assert counts == [(str(400 - rows_before), str(rows_before))], counts
        keys = [(int(r["n"]), int(r["rep"])) for r in _rows(results)]
        assert len(keys) == len(set(keys)) > rows_before
    finally:
        proc.kill()
        proc.wait(timeout=30)
        _cancel(sweep_dir)
