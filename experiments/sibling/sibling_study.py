"""The sibling study (Nguyen, Nguyen & Ho, "Demystifying Softmax Gating Function in Gaussian Mixture
of Experts", NeurIPS 2023) through the run command: a softmax-gated mixture of two Gaussian affine
experts fitted with K = 2 (exact), 3 and 4 (over-specified) components; Voronoi losses D1, D2 with
and without the infimum over the gate's translation, and per-part errors, against n.

    python experiments/sibling/sibling_study.py run        # the three studies (newton; 40 replications)
    python experiments/sibling/sibling_study.py protocol   # K = 2 moved toward the sibling code's protocol, step by step
    (either takes more run overrides, e.g. workers=1)
    python experiments/sibling/sibling_study.py analyze    # experiments/sibling/summary.md and losses.png

``run``: exact K = 2 over 20 log-spaced sizes 1e2..1e5 (one start), K = 3 and 4 over 20 sizes
1e4..1e5 with 5 starts each (init=near_truth_shrinking: every true component a cell of at least
one fitted one, noise 0.05 n^-0.083). ``protocol``: K = 2 on the sibling code's fixed grid
x = linspace(0, 1, n); then also its 200 linearly spaced sizes (5 from 100 to 900, 195 from 1e3 to
1e5); then also its estimator's stopping rule (EM, relative log-likelihood change below 1e-6).
``analyze``: every run's slopes (slopes.json), and for the over-specified fits what moves D2's
slope: its translation infimum, the mean against the median over replications, the smallest size
kept in the fit (the sibling code's n0), and the fits whose reference cell holds several atoms.
Each run resumes where it stopped (the run command's own resume)."""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

# experiments/ on sys.path for the helpers every study shares (experiments/studykit.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import studykit  # noqa: E402

from softmoe_torch.metrics.rates import fit_power_law, window_slope  # noqa: E402
from softmoe_torch.study.report import error_table  # noqa: E402

HERE = Path(__file__).resolve().parent
BASE = ["setting=softmax_gaussian_moe", "fit=newton", "init=near_truth_shrinking", "progress=false"]
STUDIES = {
    "exact_k2": [*BASE, "sweep=sibling_exact"],
    "over_k3": [*BASE, "setting.n_components=3", "sweep=sibling_over", "init.n_init=5"],
    "over_k4": [*BASE, "setting.n_components=4", "sweep=sibling_over", "init.n_init=5"],
}
SIBLING_SIZES = [int(v) for v in np.linspace(100, 900, 5)] + [int(v) for v in np.linspace(1000, 100_000, 195)]
PROTOCOL = {
    "exact_k2_grid": [*STUDIES["exact_k2"], "setting.x=grid"],
    "exact_k2_grid_sizes": [
        *STUDIES["exact_k2"],
        "setting.x=grid",
        f"sweep.sizes=[{','.join(map(str, SIBLING_SIZES))}]",
    ],
    "exact_k2_grid_sizes_em": [
        *STUDIES["exact_k2"],
        "setting.x=grid",
        f"sweep.sizes=[{','.join(map(str, SIBLING_SIZES))}]",
        "fit=em",
        "fit.rule=loglik_rel",
        "fit.tol=1e-6",
    ],
}
LOSSES = ("d1", "d1_fixed", "d2", "d2_fixed")


def run(runs: dict, extra: list):
    for name, overrides in runs.items():
        overrides = [*overrides, *extra]
        print(
            f"{name}: python -m softmoe_torch.run {' '.join(o if len(o) < 80 else o[:60] + '...]' for o in overrides)}",
            flush=True,
        )
        rc = studykit.launch(studykit.run_command(overrides, run_dir=HERE / name))
        if rc != 0:
            sys.exit(rc)


def rows_of(name: str) -> list:
    return studykit.read_results(HERE / name)


def slope_line(sizes, errors, n_from: float = 0) -> str:
    """The bootstrap slope [95% CI] over the sizes >= n_from."""
    s = window_slope(sizes, errors, lo=n_from)
    return f"{s['slope']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"


def over_analysis(name: str) -> list:
    """What moves the over-specified fits' D2 slope (sibling: -1.18 for K = 3, -2.48 for K = 4)."""
    rows = rows_of(name)
    lines = [
        f"### {name}: what moves D2's slope",
        "",
        "| quantity | mean, all sizes | median, all sizes | mean from the 6th size (n >= 2e4) | mean from the 11th (n >= 3.4e4) | mean at n = 1e4 | mean at 1e5 |",
        "|---|---|---|---|---|---|---|",
    ]
    for q in ("d2", "d2_fixed", "d1", "d1_fixed"):
        sizes, err = error_table(rows, q)
        median = fit_power_law(sizes, np.median(err, axis=1))[0]
        lines.append(
            f"| {q} | {slope_line(sizes, err)} | {median:.3f} | {slope_line(sizes, err, sizes[5])} | "
            f"{slope_line(sizes, err, sizes[10])} | {np.mean(err[0]):.3g} | {np.mean(err[-1]):.3g} |"
        )
    reference_shared = np.array([int(r["cells"].split("+")[0]) > 1 for r in rows])
    lines += [
        "",
        f"Fits whose reference cell (the true reference component's) holds several atoms: {reference_shared.sum()} of "
        f"{len(rows)}. D2 without the translation infimum by group:",
        "",
        "| group | fits | mean d2_fixed at n = 1e4 | at 1e5 | slope of the mean | mean d2 at 1e5 |",
        "|---|---|---|---|---|---|",
    ]
    for label, keep in (
        ("reference cell shared", reference_shared),
        ("reference alone in its cell", ~reference_shared),
    ):
        sub = [r for r, k in zip(rows, keep) if k]
        if len({r["n"] for r in sub}) < 2:
            continue
        sizes, err = error_table(sub, "d2_fixed")
        _, d2 = error_table(sub, "d2")
        lines.append(
            f"| {label} | {len(sub)} | {np.nanmean(err[0]):.3g} | {np.nanmean(err[-1]):.3g} | "
            f"{fit_power_law(sizes, np.nanmean(err, axis=1))[0]:.3f} | {np.nanmean(d2[-1]):.3g} |"
        )
    sizes, err = error_table(rows, "d2_fixed")
    top = np.sort(err[0])[::-1]
    lines += [
        "",
        f"At n = 1e4 the largest 2 of {err.shape[1]} values of d2_fixed carry {top[:2].sum() / top.sum():.0%} of its mean "
        f"(largest {top[0]:.3g}, median {np.median(err[0]):.3g}).",
        "",
    ]
    return lines


def partial_run(name: str) -> list:
    """Slopes of a run stopped before its end (no slopes.json), over the sizes it completed."""
    rows = rows_of(name)
    counts = Counter(int(r["n"]) for r in rows)
    full = {n for n, k in counts.items() if k == max(counts.values())}
    rows = [r for r in rows if int(r["n"]) in full]
    lines = [
        f"## {name} (stopped early: {len(rows)} fits, the {len(full)} sizes it completed, n = {min(full)}..{max(full)})",
        "",
        "| quantity | slope [95% CI] |",
        "|---|---|",
    ]
    for q in LOSSES:
        lines.append(f"| {q} | {slope_line(*error_table(rows, q))} |")
    return [*lines, ""]


def analyze():
    lines = [
        "# The sibling study: slopes of every run",
        "",
        "Slopes of log(mean error) on log n with 95% bootstrap intervals over replications (from each run's "
        "slopes.json); theory for the cells the fits found; the sibling code's published slope beside the variant it "
        "computes (no translation infimum).",
        "",
    ]
    for name in [*STUDIES, *PROTOCOL]:
        path = HERE / name / "slopes.json"
        if not path.exists():
            if (HERE / name / "results.csv").exists():
                lines += partial_run(name)
            continue
        s = json.loads(path.read_text())
        runs = json.loads((HERE / name / "runs.json").read_text())
        lines += [
            f"## {name} ({s['n_fits']} fits, {sum(r['seconds'] for r in runs):.0f} s of runs)",
            "",
            "| quantity | slope [95% CI] | theory | sibling |",
            "|---|---|---|---|",
        ]
        for q, p in s["params"].items():
            theory = "-" if p["theory"] is None else f"{p['theory']:.3f}"
            sib = "-" if p["paper"] is None else f"{p['paper']:.3f}"
            lines.append(f"| {q} | {p['slope']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}] | {theory} | {sib} |")
        lines.append("")
    for name in ("over_k3", "over_k4"):
        if (HERE / name / "results.csv").exists():
            lines += over_analysis(name)
    (HERE / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    figure()


def figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("exact_k2", "over_k3", "over_k4") if (HERE / n / "results.csv").exists()]
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.8), constrained_layout=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = rows_of(name)
        for q, color in zip(LOSSES, ("C0", "C1", "C2", "C3")):
            sizes, err = error_table(rows, q)
            slope = fit_power_law(sizes, np.mean(err, axis=1))[0]
            ax.plot(sizes, np.mean(err, axis=1), "o-", ms=3, color=color, label=f"{q} mean ({slope:+.2f})")
            ax.plot(sizes, np.median(err, axis=1), ":", color=color, label=f"{q} median")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n")
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=6)
    fig.savefig(HERE / "losses.png", dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("run", "protocol", "analyze"))
    parser.add_argument(
        "overrides", nargs="*", help="more overrides for every run, e.g. workers=1 (results do not depend on it)"
    )
    args = parser.parse_args(argv)
    if args.what == "run":
        run(STUDIES, args.overrides)
    elif args.what == "protocol":
        run(PROTOCOL, args.overrides)
    else:
        analyze()


if __name__ == "__main__":
    main()
