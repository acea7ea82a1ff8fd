"""The slow rates where they live: both non-distinguishable cases over 15 log-spaced sizes from
1e4 to 1e7 x 40 replications, by the fastest method (newton), and a subset refitted by the default
EM at the two largest sizes. Every run goes through the public ``python -m softmoe_torch.run``
command; this script lists the runs, launches them one after another (each uses every core) and
analyses their results.csv files.

    python experiments/large_n.py run [--only NAME,...]   # resumable: a rerun skips finished fits
    python experiments/large_n.py analyze                  # fits.csv.gz, slopes.json, tables.md, figures

Runs go to experiments/large_n/runs/<name>/ (git-ignored), with <name>.log and <name>.usage.json
(wall seconds and peak memory summed over the command's processes); the analysis writes into
experiments/large_n/."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmark import LAUNCHER, load_average

HERE = Path(__file__).resolve().parent / "large_n"
RUNS = HERE / "runs"
CASES = ("nondistinguishable_eta", "nondistinguishable_nu")
SWEEP = dict(n_min=10_000, n_max=10_000_000, num_sizes=15, reps=40)
SIZES = sorted({int(round(n)) for n in np.logspace(np.log10(SWEEP["n_min"]), np.log10(SWEEP["n_max"]), SWEEP["num_sizes"])})
EM_SIZES, EM_REPS = SIZES[-2:], 2  # the EM check: replications 0 and 1 at the two largest sizes


def overrides(name: str) -> list:
    """The run command's overrides of run ``name`` (<setting>_newton or <setting>_em)."""
    setting, method = name.rsplit("_", 1)
    if method == "newton":
        sweep = [f"sweep.{k}={v}" for k, v in SWEEP.items()]
    else:
        sweep = [f"sweep.sizes=[{','.join(map(str, EM_SIZES))}]", f"sweep.reps={EM_REPS}"]
    return [f"setting={setting}", f"fit={method}", *sweep]


NAMES = [f"{case}_{method}" for method in ("newton", "em") for case in CASES]


def command(name: str) -> list:
    return [sys.executable, "-m", "softmoe_torch.run", *overrides(name), "progress=false", f"hydra.run.dir={RUNS / name}"]


def run(names: list):
    """Run each named study in turn through LAUNCHER (wall time, peak memory of the process tree)."""
    RUNS.mkdir(parents=True, exist_ok=True)
    for name in names:
        before = load_average()
        usage = RUNS / f"{name}.usage.json"
        subprocess.run([sys.executable, "-c", LAUNCHER, str(usage), str(RUNS / f"{name}.log"), *command(name)], check=True)
        record = json.loads(usage.read_text())
        record.update(command=" ".join(["python", *command(name)[1:]]), load_before=before, load_after=load_average())
        usage.write_text(json.dumps(record, indent=1))
        print(f"{name}: exit {record['returncode']} after {record['wall_seconds']:.0f} s, "
              f"peak {record['tree_kib'] / 2**20:.1f} GiB", flush=True)
        if record["returncode"] != 0:
            sys.exit(f"{name} failed; see {RUNS / name}.log")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["run", "analyze"])
    parser.add_argument("--only", default=",".join(NAMES), help="comma-separated runs of: " + ", ".join(NAMES))
    args = parser.parse_args(argv)
    if args.what == "run":
        run(args.only.split(","))


if __name__ == "__main__":
    main()
