"""SIGKILL a real run at random moments: results.csv is always complete and well formed, keeps
every row it held before the kill (so a kill loses at most the batch in flight), and a resume
finishes the sweep."""

import itertools
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from softmoe_torch.settings.setting import Setting
from softmoe_torch.study.store import Results, columns

REPS, SIZES = 2, 40
ARGS = [
    "fit=direct",
    "progress=false",
    "monitor.tensorboard=false",
    f"sweep.reps={REPS}",
    "sweep.n_min=200",
    "sweep.n_max=4000",
    f"sweep.num_sizes={SIZES}",
]


def keys(path) -> set:
    """(n, rep) of the rows of a results file, checked whole: typed, whole batches only."""
    if not path.exists():
        return set()
    rows = Results.load(path, columns(Setting)).rows  # a damaged or cut-off file raises here
    got = {(r["n"], r["rep"]) for r in rows}
    assert len(got) == len(rows)
    per_n = {}
    for n, _ in got:
        per_n[n] = per_n.get(n, 0) + 1
    assert set(per_n.values()) <= {REPS}, per_n
    return got


def kill_at_random(tmp_path, kills: int, seed: int):
    """Start runs and SIGKILL each after a random 1.5-6 s, ``kills`` times; then resume to the end."""
    rng, dirs = random.Random(seed), itertools.count()
    out, done = tmp_path / f"run{next(dirs)}", 0
    while done < kills:
        proc = subprocess.Popen(
            [sys.executable, "-m", "softmoe_torch.run", *ARGS, f"hydra.run.dir={out}"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(1.5, 6.0))
        before = keys(out / "results.csv")
        proc.send_signal(signal.SIGKILL)
        if proc.wait() != -signal.SIGKILL:  # the sweep had finished: go on in a fresh directory
            out = tmp_path / f"run{next(dirs)}"
            continue
        done += 1
        assert before <= keys(out / "results.csv")
    final = subprocess.run(
        [sys.executable, "-m", "softmoe_torch.run", *ARGS, f"hydra.run.dir={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert final.returncode == 0, final.stderr
    assert len(keys(out / "results.csv")) == REPS * SIZES


def test_two_kills_lose_nothing_written(tmp_path):
    kill_at_random(tmp_path, kills=2, seed=0)


@pytest.mark.slow
def test_twenty_kills_lose_nothing_written(tmp_path):
    kill_at_random(tmp_path, kills=20, seed=1)
