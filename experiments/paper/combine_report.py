"""Combine the three paper settings' outputs into one report.

    python experiments/paper/combine_report.py RUNS_DIR OUT_DIR

RUNS_DIR holds one run directory per setting (as written by experiments/paper/reproduce.sh) and
wall_seconds.txt; OUT_DIR receives REPORT.md and one small PNG per setting. Everything of an existing
REPORT.md from the line KEEP on (the science study's sections, written by hand) is kept."""

import json
import platform
import shutil
import sys
from pathlib import Path

import torch

KEEP = "<!-- science: the sections below are kept when this report is regenerated -->"

SETTINGS = {
    "distinguishable": "Fig. 1 (distinguishable, Laplace f0, eta* = -e1)",
    "nondistinguishable_eta": "Fig. 2a (non-distinguishable, case i: eta* = e1 (1 + n^-1/8))",
    "nondistinguishable_nu": "Fig. 2b (non-distinguishable, case ii: nu* = nu0 (1 + n^-1/8))",
}


def _method(runs: Path) -> str:
    """The fitting method of the runs (the same for every setting), from their fingerprints."""
    methods = {json.loads((runs / name / "fingerprint.json").read_text())["fit"]["method"] for name in SETTINGS}
    return ", ".join(sorted(methods))


def main(runs: Path, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    walls = dict(line.split() for line in (runs / "wall_seconds.txt").read_text().splitlines() if line.strip())
    lines = [
        "# Reproduction of the paper's Figures 1, 2a and 2b",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or 'cpu'}, "
        f"Python {platform.python_version()}, torch {torch.__version__}.",
        "Protocol: 20 log-spaced sample sizes from 10^3 to 10^5, 40 replications each, near-truth start "
        f"(truth + N(0, 0.1^2)), maximum likelihood by `fit={_method(runs)}`, default bounds.",
        "Slopes: least squares of log(mean error) on log n; 95% CI by bootstrap over replications.",
        "",
        "| figure | parameter | fitted slope | 95% CI | theory | paper | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for name, title in SETTINGS.items():
        run = runs / name
        summary = json.loads((run / "slopes.json").read_text())
        for p, s in summary["params"].items():
            paper = "-" if s["paper"] is None else f"{s['paper']:.2f}"
            lines.append(
                f"| {title.split(' (')[0]} | {p} | {s['slope']:.3f} | [{s['ci_low']:.3f}, {s['ci_high']:.3f}] "
                f"| {s['theory']:.3f} | {paper} | {s['verdict']} |"
            )
        notes.append(
            f"- {title}: {summary['n_fits']} fits, {summary['failed']} failed, "
            f"{summary['not_converged']} not converged; wall time {float(walls.get(name, 'nan')):.0f} s."
        )
        shutil.copy(run / "figure.png", out / f"{name}.png")
    lines += ["", *notes, ""]
    lines += [f"![{name}]({name}.png)" for name in SETTINGS]
    report = out / "REPORT.md"
    old = report.read_text() if report.exists() else ""
    kept = old[old.index(KEEP) :] if KEEP in old else ""
    report.write_text("\n".join(lines) + "\n" + ("\n" + kept if kept else ""))
    print(out / "REPORT.md")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python experiments/paper/combine_report.py RUNS_DIR OUT_DIR")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
