"""The sibling study (Nguyen, Nguyen & Ho, "Demystifying Softmax Gating Function in Gaussian Mixture
of Experts", NeurIPS 2023) through the run command: a softmax-gated mixture of two Gaussian affine
experts fitted with K = 2 (exact), 3 and 4 (over-specified) components; Voronoi losses D1, D2 with
and without the infimum over the gate's translation, and per-part errors, against n.

    python experiments/sibling/sibling_study.py run        # the three studies (newton; 40 replications)
    python experiments/sibling/sibling_study.py protocol   # K = 2 moved toward the sibling code's protocol, step by step
    python experiments/sibling/sibling_study.py large      # K = 3 at n = 2.2e5, 4.6e5, 1e6 (20 replications)
    (either takes more run overrides, e.g. workers=1)
    python experiments/sibling/sibling_study.py analyze    # experiments/sibling/summary.md and losses.png

``run``: exact K = 2 over 20 log-spaced sizes 1e2..1e5 (one start), K = 3 and 4 over 20 sizes
1e4..1e5 with 5 starts each (init=near_truth_shrinking: every true component a cell of at least
one fitted one, noise 0.05 n^-0.083). ``protocol``: K = 2 on the sibling code's fixed grid
x = linspace(0, 1, n); then also its 200 linearly spaced sizes (5 from 100 to 900, 195 from 1e3 to
1e5); then also its estimator's stopping rule (EM, relative log-likelihood change below 1e-6).
``large``: K = 3 at three sizes beyond (2.2e5, 4.6e5, 1e6; 20 replications), which ``analyze``
joins to over_k3's. ``analyze``: every run's slopes (slopes.json); the slopes before and after
the papers' loss (capped_loss/: what the sweeps reported with the capped loss) and whether the
fits are the same fits; for the over-specified runs the distribution per size (cell patterns,
fits on a bound, D2's mean, median and quartiles) and the slopes of the mean and of the median of
every quantity; K = 3 up to 1e6 with its figure large_n.png and each cell pattern's
log-likelihood above the truth's. Each run resumes where it stopped (the run command's own resume)."""

import argparse
import csv
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

# experiments/ on sys.path for the helpers every study shares (experiments/studykit.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import studykit  # noqa: E402

from softmoe_torch.metrics.rates import fit_power_law, window_slope  # noqa: E402
from softmoe_torch.metrics.voronoi import theory_slope  # noqa: E402
from softmoe_torch.settings.moe import QUANTITIES  # noqa: E402
from softmoe_torch.study.report import error_table  # noqa: E402

HERE = Path(__file__).resolve().parent
BASE = ["setting=softmax_gaussian_moe", "fit=newton", "init=near_truth_shrinking", "progress=false"]
STUDIES = {
    "exact_k2": [*BASE, "sweep=sibling_exact"],
    "over_k3": [*BASE, "setting.n_components=3", "sweep=sibling_over", "init.n_init=5"],
    "over_k4": [*BASE, "setting.n_components=4", "sweep=sibling_over", "init.n_init=5"],
}
# where the over-specified rates live: K = 3 beyond the sibling's sizes (with over_k3's 1e4..1e5), 20 replications
LARGE = {"over_k3_large": [*STUDIES["over_k3"], "sweep.sizes=[215443,464159,1000000]", "sweep.reps=20"]}
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


def current(name: str) -> bool:
    """Whether run ``name`` has results of the papers' loss (every column of LOSSES)."""
    rows = rows_of(name) if (HERE / name / "results.csv").exists() else []
    return bool(rows) and all(f"err_{q}" in rows[0] for q in LOSSES)


def present(rows) -> list:
    """The quantities every row has (a run from before a column was added lacks it)."""
    return [q for q in QUANTITIES if all(f"err_{q}" in r for r in rows)]


def slope_line(sizes, errors, n_from: float = 0) -> str:
    """The bootstrap slope [95% CI] over the sizes >= n_from."""
    s = window_slope(sizes, errors, lo=n_from)
    return f"{s['slope']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"


def slope_cell(s: dict | None) -> str:
    return "-" if s is None else f"{s['slope']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"


def before_after() -> list:
    """The slopes the sweeps reported with the capped loss (capped_loss/slopes.json) beside today's."""
    old = json.loads((HERE / "capped_loss" / "slopes.json").read_text())
    lines = [
        "## Before and after the papers' loss",
        "",
        "Slopes of log(mean loss) on log n [95% CI]: before, the loss whose translation multiplied the fitted "
        "measure (capped at sum_j exp(b0*_j)); after, the papers' loss (d1, d2 on the canonical scale; *_fixed as "
        "fitted, no translation).",
        "",
        "| run | quantity | before | after |",
        "|---|---|---|---|",
    ]
    for name, before in old["runs"].items():
        path = HERE / name / "slopes.json"
        if not path.exists() or not current(name):
            continue
        after = json.loads(path.read_text())["params"]
        for q in LOSSES:
            lines.append(f"| {name} | {q} | {slope_cell(before.get(q))} | {slope_cell(after.get(q))} |")
    return [*lines, ""]


def same_fits(name: str) -> list:
    """Today's fits against the capped-loss run's on the same data (capped_loss/<name>.csv)."""
    path = HERE / "capped_loss" / f"{name}.csv"
    if not path.exists() or not current(name):
        return []
    with open(path) as f:
        old = {(int(r["n"]), int(r["rep"])): r for r in csv.DictReader(f)}
    new = {(int(r["n"]), int(r["rep"])): r for r in rows_of(name)}
    both = sorted(old.keys() & new.keys())
    if not both:
        return []
    drop = np.array([float(old[k]["mean_loglik"]) - float(new[k]["mean_loglik"]) for k in both])
    moved = sum(old[k]["cells"] != new[k]["cells"] for k in both)
    seconds = json.loads((HERE / "capped_loss" / "slopes.json").read_text()).get("seconds", {}).get(name)
    runs = HERE / name / "runs.json"
    wall = sum(r["seconds"] for r in json.loads(runs.read_text())) if runs.exists() else None
    return [
        f"**{name}, the same fits**: {len(both)} fits on the same data as before; the mean log-likelihood is lower "
        f"than before by more than 1e-9 in {(drop > 1e-9).sum()}, higher by more than 1e-9 in {(drop < -1e-9).sum()} "
        f"(largest drop {drop.max():.2e} per sample); cell patterns changed in {moved}."
        + ("" if wall is None else f" Wall time {wall:.0f} s" + (f" (before: {seconds:.0f} s)." if seconds else ".")),
        "",
    ]


def largest_cell(rows) -> int:
    """The most common number of atoms in a fit's largest cell."""
    return Counter(max(int(c) for c in r["cells"].split("+")) for r in rows).most_common(1)[0][0]


def theory_of(q: str, largest: int) -> str:
    slope = theory_slope(q, largest, exact=False)
    return "-" if slope is None else f"{slope:.3f}"


def table_head(*columns) -> list:
    """The two first lines of a Markdown table with these column names."""
    return ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


def patterns(rows) -> list:
    """The cell patterns ('1+2', ...) in order of frequency."""
    return [c for c, _ in Counter(r["cells"] for r in rows).most_common()]


def distribution(rows, title: str) -> list:
    """Per size: the share of fits by cell pattern and on a bound, and D2's mean, median and
    quartiles; then every quantity's slope of the mean and of the median, with the theory's."""
    sizes = sorted({int(r["n"]) for r in rows})
    kinds = patterns(rows)
    lines = [
        f"### {title}: the distribution",
        "",
        *table_head("n", "fits", *kinds, "on a bound", "D2 mean", "D2 median", "D2 quartiles"),
    ]
    for n in sizes:
        at = [r for r in rows if int(r["n"]) == n]
        d2 = np.array([float(r["err_d2"]) for r in at])
        share = Counter(r["cells"] for r in at)
        bound = sum(bool(r.get("at_bound")) for r in at)
        q1, q3 = np.quantile(d2, [0.25, 0.75])
        lines.append(
            f"| {n} | {len(at)} | "
            + " | ".join(f"{share[k] / len(at):.2f}" for k in kinds)
            + f" | {bound / len(at):.2f} | {d2.mean():.3g} | {np.median(d2):.3g} | [{q1:.3g}, {q3:.3g}] |"
        )
    largest = largest_cell(rows)
    lines += [
        "",
        *table_head(
            "quantity",
            "slope of the mean",
            "slope of the median",
            f"theory (largest cell of {largest} atoms, the most common)",
        ),
    ]
    for q in present(rows):
        sz, err = error_table(rows, q)
        mean, median = window_slope(sz, err), window_slope(sz, err, statistic="median")
        lines.append(f"| {q} | {slope_cell(mean)} | {slope_cell(median)} | {theory_of(q, largest)} |")
    return [*lines, ""]


def by_pattern(rows, title: str) -> list:
    """Each quantity's slope of the median over the fits of each cell pattern alone."""
    kinds = patterns(rows)
    lines = [
        f"### {title}: slope of the median by cell pattern",
        "",
        *table_head("quantity", *(f"{k} fits" for k in kinds), "theory (the most common largest cell)"),
    ]
    for q in present(rows):
        cells = []
        for k in kinds:
            sz, err = error_table([r for r in rows if r["cells"] == k], q)
            cells.append(slope_cell(window_slope(sz, err, statistic="median")))
        lines.append(f"| {q} | " + " | ".join(cells) + f" | {theory_of(q, largest_cell(rows))} |")
    return [*lines, ""]


def gain_over_truth(rows, title: str) -> list:
    """n (mean log-likelihood of the fit - of the truth) by cell pattern and size: how far above
    the truth each pattern's fits sit."""
    sizes = sorted({int(r["n"]) for r in rows})
    kinds = patterns(rows)
    lines = [
        f"### {title}: log-likelihood above the truth's, n (l_fit - l_truth), mean [fits] by cell pattern",
        "",
        *table_head("n", *kinds),
    ]
    for n in sizes:
        cells = []
        for k in kinds:
            gain = [
                n * (float(r["mean_loglik"]) - float(r["loglik_truth"]))
                for r in rows
                if int(r["n"]) == n and r["cells"] == k
            ]
            cells.append(f"{np.mean(gain):.2f} [{len(gain)}]" if gain else "-")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return [*lines, ""]


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
        if name in STUDIES and not current(name):
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
    lines += before_after()
    for name in ("exact_k2", "over_k3", "over_k4"):
        lines += same_fits(name)
    for name in ("over_k3", "over_k4"):
        if current(name):
            done = "" if (HERE / name / "slopes.json").exists() else " (stopped early: the sizes it completed)"
            lines += distribution(rows_of(name), name + done)
        elif (HERE / name / "results.csv").exists():
            lines += [f"**{name}**: its results predate the papers' loss (not rerun yet); left out here.", ""]
    large = large_rows()
    if large:
        lines += ["## Where the over-specified rates live: K = 3 from 1e4 to 1e6", ""]
        lines += distribution(large, "over_k3 and over_k3_large")
        lines += by_pattern(large, "over_k3 and over_k3_large")
        lines += gain_over_truth(large, "over_k3 and over_k3_large")
    (HERE / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    figure()
    if large:
        large_figure(large)


def large_rows() -> list:
    """over_k3's fits (1e4..1e5, 40 replications) and over_k3_large's (beyond, 20): one K = 3 study."""
    if not (HERE / "over_k3_large" / "results.csv").exists():
        return []
    return rows_of("over_k3") + rows_of("over_k3_large")


def figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("exact_k2", "over_k3", "over_k4") if current(n)]
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


def large_figure(rows):
    """large_n.png: per quantity, the median with its quartile band and the mean against n, and the
    theory's exponent for cells of two atoms drawn through the median's first point; top row D2 and
    each part's largest error, bottom row the mass and each part weighted inside the cells of two
    (where the rows have those columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = ("gate_slope", "expert_bias", "expert_slope", "variance")
    quantities = ["d2", *parts, "mass", *(f"{p}_in_cells" for p in parts)]
    quantities = [q for q in quantities if q in present(rows) or q in ("d2", "mass")]
    columns = -(-len(quantities) // 2)
    fig, axes = plt.subplots(2, columns, figsize=(4 * columns, 7), constrained_layout=True, squeeze=False)
    for ax in axes.flat[len(quantities) :]:
        ax.axis("off")
    for ax, q in zip(axes.flat, quantities):
        sizes, err = error_table(rows, q)
        median = np.nanmedian(err, axis=1)
        q1, q3 = np.nanquantile(err, 0.25, axis=1), np.nanquantile(err, 0.75, axis=1)
        fitted = window_slope(sizes, err, statistic="median")
        ax.fill_between(sizes, q1, q3, color="C0", alpha=0.25, lw=0, label="quartiles")
        ax.plot(sizes, median, "o-", ms=3, color="C0", label=f"median (slope {fitted['slope']:+.3f})")
        ax.plot(sizes, np.nanmean(err, axis=1), "s:", ms=3, color="C1", label="mean")
        theory = theory_slope(q, 2, exact=False)
        ax.plot(sizes, median[0] * (sizes / sizes[0]) ** theory, "k--", lw=1, label=f"theory n^{theory:g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n")
        ax.set_title(q, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle("K = 3 fitted to the K = 2 truth: errors against n (cells of two atoms: the theory's exponents)")
    fig.savefig(HERE / "large_n.png", dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("run", "protocol", "large", "analyze"))
    parser.add_argument(
        "overrides", nargs="*", help="more overrides for every run, e.g. workers=1 (results do not depend on it)"
    )
    args = parser.parse_args(argv)
    if args.what == "run":
        run(STUDIES, args.overrides)
    elif args.what == "protocol":
        run(PROTOCOL, args.overrides)
    elif args.what == "large":
        run(LARGE, args.overrides)
    else:
        analyze()


if __name__ == "__main__":
    main()
