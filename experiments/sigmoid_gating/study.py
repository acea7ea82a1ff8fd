"""The sigmoid-gating study (Nguyen, Ho & Rinaldo, "Sigmoid Gating is More Sample Efficient than Softmax
Gating in Mixture of Experts", NeurIPS 2024, arXiv 2405.13997) through the run command: regression
mixtures of experts, k* = 8 true experts, K = 9 fitted, d = 32, X ~ Uniform([-1, 1]^32), nu = 0.01;
three truths (``sigmoid_moe``: softmax-gated, Fig. 1 as we read its text; ``sigmoid_moe_regime1``,
``sigmoid_moe_regime2``: the appendix's sigmoid-gated truths) x experts (relu, linear) x the fitted
gate (sigmoid, softmax); beside them the ICML 2024 comparison (Nguyen, Ho & Rinaldo, "On Least Square
Estimation in Softmax Gating Mixture of Experts", arXiv 2402.02952; ``softmax_ridge_moe``, a truth of
ours: k* = 2, K = 3, d = 1, X ~ Uniform[0, 1]) of ridge experts sigmoid(a x + b) against linear ones
under a softmax gate; every cell by two estimators on the same data from the same start: the paper's protocol
(``fit=sgd``: 10 epochs of mini-batch SGD, learning rate 0.1, batches of 64) and least squares run
to its end (``fit=lm``, Levenberg-Marquardt, gtol 1e-8). 10 sizes 1e3..1e5, 20 replications.

    python experiments/sigmoid_gating/study.py run sgd        # the paper's protocol, every cell
    python experiments/sigmoid_gating/study.py run lm [--cells NAME ...]   # least squares
    python experiments/sigmoid_gating/study.py analyze        # fits.csv.gz, summary.md, fig1.png, appendix.png, ridge.png

Runs go to experiments/sigmoid_gating/runs/<estimator>/<cell>/ (git-ignored); each resumes where
it stopped (the run command's own resume). More run overrides may follow, e.g. ``workers=1``. The committed
record is fits.csv.gz (every fit) and walls.json (each run's wall seconds): analyze reads a cell from its
run folder where it has one, else from the record, so a fresh clone re-analyses without re-running, and a
cell re-run replaces its rows. The references G_bar are kept beside the study (best_fits/, committed;
``SOFTMOE_CACHE`` points here unless set), so that a fresh clone reads them instead of computing them."""

import argparse
import csv
import gzip
import io
import json
import os
import sys
from pathlib import Path

import numpy as np

# experiments/ on sys.path for the helpers every study shares (experiments/studykit.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import studykit  # noqa: E402

from softmoe_torch.metrics.rates import window_slope  # noqa: E402
from softmoe_torch.study.report import error_table  # noqa: E402

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"  # the run folders (git-ignored); analyze writes into HERE
RECORD, WALLS = HERE / "fits.csv.gz", HERE / "walls.json"  # the committed record of the runs
os.environ.setdefault("SOFTMOE_CACHE", str(HERE))  # G_bar files in HERE/best_fits, for the runs launched too
TRUTHS = {
    "softmax": "sigmoid_moe",
    "regime1": "sigmoid_moe_regime1",
    "regime2": "sigmoid_moe_regime2",
    "ridge": "softmax_ridge_moe",
}
EXPERTS, GATES, ESTIMATORS = ("relu", "linear"), ("sigmoid", "softmax"), ("sgd", "lm")
COMBINATIONS = [
    *((truth, expert, gate) for truth in ("softmax", "regime1", "regime2") for expert in EXPERTS for gate in GATES),
    *(("ridge", expert, "softmax") for expert in ("sigmoid", "linear")),  # the ICML 2024 comparison
]
P = 594  # parameters of a K = 9, d = 32 sigmoid-gated fit; slopes also over n >= 10 p
N_FROM = 10 * P


def cells() -> dict:
    """{run name: overrides} of every cell: <truth>_<expert>_<gate>."""
    return {
        f"{truth}_{expert}_{gate}": [
            f"setting={TRUTHS[truth]}",
            f"setting.expert={expert}",
            f"setting.gate={gate}",
            "sweep=sigmoid_moe",
            "progress=false",
        ]
        for truth, expert, gate in COMBINATIONS
    }


def well_specified(name: str) -> bool:
    truth, _, gate = name.split("_")
    return gate == ("softmax" if truth in ("softmax", "ridge") else "sigmoid")


def run(estimator: str, names: list, extra: list):
    for name, overrides in cells().items():
        if names and name not in names:
            continue
        overrides = [*overrides, f"fit={estimator}", *extra]
        print(f"{name} {estimator}: python -m softmoe_torch.run {' '.join(overrides)}", flush=True)
        rc = studykit.launch(studykit.run_command(overrides, run_dir=RUNS / estimator / name))
        if rc != 0:
            sys.exit(rc)


def recorded() -> dict:
    """{estimator: {cell: rows}} of the committed record (fits.csv.gz), each row as its run wrote it (the
    columns that cell's run did not write, left empty in the record, dropped)."""
    out = {est: {} for est in ESTIMATORS}
    if RECORD.exists():
        with gzip.open(RECORD, "rt", newline="") as fh:
            for row in csv.DictReader(fh):
                est, name = row.pop("estimator"), row.pop("cell")
                out[est].setdefault(name, []).append({k: v for k, v in row.items() if v != ""})
    return out


def runs_of(estimator: str, record: dict) -> dict:
    """{cell: rows} of the cells of ``estimator`` with results: the run folder's where it has results,
    else the record's."""
    out = {}
    for name in cells():
        if (RUNS / estimator / name / "results.csv").exists():
            out[name] = studykit.read_results(RUNS / estimator / name)
        elif name in record[estimator]:
            out[name] = record[estimator][name]
    return out


def slope_cell(sizes, table, lo: float = 0) -> str:
    """The bootstrap slope of the mean [95% CI] over the sizes >= lo."""
    return studykit.fmt(window_slope(sizes, table, lo=lo))


def walls() -> dict:
    """{estimator: {cell: wall seconds}}: each run folder's runs.json (its runs' seconds summed) where it has
    one, else the record's (walls.json)."""
    out = json.loads(WALLS.read_text()) if WALLS.exists() else {}
    out = {est: dict(out.get(est, {})) for est in ESTIMATORS}
    for est in ESTIMATORS:
        for name in cells():
            path = RUNS / est / name / "runs.json"
            if path.exists():
                out[est][name] = round(sum(r["seconds"] for r in json.loads(path.read_text())), 1)
    return out


def published(name: str):
    truth, expert, gate = name.split("_")
    setting = studykit.compose([f"setting={TRUTHS[truth]}"]).setting
    return (setting.get("published_slopes") or {}).get(f"{expert}_{gate}")


def theory(name: str, quantity: str):
    from softmoe_torch.settings.setting import load_setting

    truth, expert, gate = name.split("_")
    setting = load_setting(
        studykit.compose([f"setting={TRUTHS[truth]}", f"setting.expert={expert}", f"setting.gate={gate}"]).setting
    )
    slope = setting.theory_slopes()[quantity]
    return "slower than any power" if slope is None and quantity == "d1" else ("-" if slope is None else f"{slope}")


def start_errors(name: str, quantity: str) -> float:
    """The mean of ``quantity`` over the cell's starts (the sweep's own ``sweep_starts``, errors by
    the setting's ``errors``) at the smallest and the largest size, 20 replications each: where the
    fits began."""
    import torch

    from softmoe_torch.settings.setting import load_setting
    from softmoe_torch.study.config_checks import sample_sizes
    from softmoe_torch.study.sweep import sweep_starts

    cfg = studykit.compose(cells()[name])
    setting = load_setting(cfg.setting)
    if quantity == "d3" and setting.best_fit(compute=False) is None:
        return float("nan")  # its reference is not kept here (analyze never computes one)
    reps, sizes = list(range(int(cfg.sweep.reps))), sample_sizes(cfg.sweep)
    values = []
    for n in (sizes[0], sizes[-1]):
        start = sweep_starts(cfg, setting, setting.model(), n, reps, torch.zeros(len(reps), 1))[0]
        values.append(
            setting.function_error(start) if quantity == "fn" else setting.errors(start, n)[f"err_{quantity}"]
        )
    return float(torch.cat(values).mean())


def table(quantity: str, runs: dict) -> list:
    """One line per cell with results: the mean of ``quantity`` at the start, slopes of its mean (all
    sizes, n >= 10 p) by estimator, the published slope and the theory's."""
    lines = [
        "| cell | fits (sgd / lm) | at the start | sgd: all n | sgd: n >= 6e3 | lm: all n | lm: n >= 6e3 | "
        "published | theory |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in cells():
        if (quantity in ("d1", "d3") and well_specified(name) != (quantity == "d1")) or not has(runs, name, quantity):
            continue
        parts, counts = [], []
        for est in ESTIMATORS:
            rows = runs[est].get(name)
            if not rows or f"err_{quantity}" not in rows[0]:
                parts += ["-", "-"]
                counts.append("0")
                continue
            sizes, tab = error_table(rows, quantity)
            parts += [slope_cell(sizes, tab), slope_cell(sizes, tab, N_FROM)]
            counts.append(str(len(rows)))
        pub = published(name) if quantity in ("d1", "d3") else None
        lines.append(
            f"| {name} | {' / '.join(counts)} | {start_errors(name, quantity):.3g} | {' | '.join(parts)} | {'-' if pub is None else pub} | "
            f"{theory(name, quantity)} |"
        )
    return lines


def one_each(row: dict) -> bool:
    """Whether a misspecified fit's D3 cells are G_bar's own: one fitted atom per atom of G_bar."""
    return set(row["cells"].split("+")) == {"1"}


def d3_patterns(runs: dict) -> list:
    """Per misspecified cell and estimator: the share of fits with one atom per atom of G_bar at the
    smallest, a middle and the largest size, and D3's slope (n >= 10 p) over those fits and over the
    others (which settled about another arrangement of the atoms than G_bar's)."""
    lines = [
        "| cell | estimator | one atom per G_bar atom: n = 1e3 / 1.3e4 / 1e5 | D3 slope, those fits | "
        "D3 slope, the others |",
        "|---|---|---|---|---|",
    ]
    for name in cells():
        for est in ESTIMATORS:
            rows = runs[est].get(name)
            if well_specified(name) or not rows or "err_d3" not in rows[0]:
                continue
            sizes = sorted({int(r["n"]) for r in rows})
            shares = [np.mean([one_each(r) for r in rows if int(r["n"]) == sizes[i]]) for i in (0, 5, -1)]
            slopes = [
                slope_cell(
                    *error_table([{**r, "err_d3": r["err_d3"] if one_each(r) == keep else "nan"} for r in rows], "d3"),
                    N_FROM,
                )
                for keep in (True, False)
            ]
            slopes = ["too few fits" if "nan" in v else v for v in slopes]  # a size without such fits
            lines.append(f"| {name} | {est} | {' / '.join(f'{v:.0%}' for v in shares)} | {' | '.join(slopes)} |")
    return lines


def has(runs: dict, name: str, quantity: str) -> bool:
    """Whether some estimator's run of cell ``name`` reports ``quantity``."""
    return any(runs[est].get(name) and f"err_{quantity}" in runs[est][name][0] for est in ESTIMATORS)


def best_fits(runs: dict) -> list:
    """Per misspecified cell with D3 results, its reference for D3 (the setting's own ``best_fit``): the root mean
    square of f_Gbar - f* over its design, the smallest distance between two of its atoms, how its
    fit stopped."""
    from softmoe_torch.settings.regression_truths import separation
    from softmoe_torch.settings.setting import load_setting

    lines = ["| cell | rms of f_Gbar - f* | smallest atom distance | stop |", "|---|---|---|---|"]
    for name in cells():
        if well_specified(name) or not has(runs, name, "d3"):
            continue
        setting = load_setting(studykit.compose(cells()[name]).setting)
        best = setting.best_fit(compute=False)  # analyze reads references, never computes one
        if best is None:
            lines.append(f"| {name} | not kept here: `run lm --cells {name}` computes it | | |")
            continue
        model = setting.model()
        model.load_state_dict(best["params"], strict=False)
        lines.append(f"| {name} | {best['rss'] ** 0.5:.3g} | {separation(model):.3g} | {best['status']} |")
    return lines


def stops(runs: dict, wall: dict) -> list:
    """How every least-squares fit stopped, by cell, with its run's wall seconds (``walls``)."""
    lines = [
        "| cell | fits | converged (gradient <= gtol) | stalled | max_iter | failed | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in runs["lm"].items():
        status = [r["status"] for r in rows]
        count = lambda p: sum(s.startswith(p) for s in status)  # noqa: E731
        seconds = f"{wall['lm'][name]:.0f}" if name in wall["lm"] else "-"
        lines.append(
            f"| {name} | {len(rows)} | {count('converged')} | {count('stalled')} | {count('max_iter')} | "
            f"{count('failed') + count('error')} | {seconds} |"
        )
    return lines


def gate_comparison(runs: dict) -> list:
    """On the same data, the two fitted gates' regression-function errors: per truth, experts and
    estimator where both gates ran, at the smallest, a middle and the largest size, the mean fn of
    the sigmoid fit over that of the softmax fit and the share of data sets on which the sigmoid fit's
    fn is the lower (among the data sets both finished)."""
    lines = [
        "| truth, experts | estimator | n | mean fn, sigmoid fit | mean fn, softmax fit | ratio | sigmoid lower on |",
        "|---|---|---|---|---|---|---|",
    ]
    for truth in ("softmax", "regime1", "regime2"):
        for expert in EXPERTS:
            for est in ESTIMATORS:
                sig, soft = (runs[est].get(f"{truth}_{expert}_{g}") for g in GATES)
                if not sig or not soft:
                    continue
                sizes, a = error_table(sig, "fn")
                _, b = error_table(soft, "fn")
                for i in (0, len(sizes) // 2, len(sizes) - 1):
                    both = np.isfinite(a[i]) & np.isfinite(b[i])  # data sets both gates finished on
                    lower = np.mean(a[i][both] < b[i][both])
                    lines.append(
                        f"| {truth}, {expert} | {est} | {sizes[i]} | {np.nanmean(a[i]):.3g} | {np.nanmean(b[i]):.3g} | "
                        f"{np.nanmean(a[i]) / np.nanmean(b[i]):.2f} | {lower:.0%} |"
                    )
    return lines


def figure(runs: dict, names: list, path: Path, title: str):
    """Mean of D1 (well-specified cells) or of D3 (others) against n, error bars of two standard
    deviations, one panel per cell, both estimators."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        quantity = "d1" if well_specified(name) else "d3"
        for est, color in zip(ESTIMATORS, ("tab:green", "tab:blue")):
            rows = runs[est].get(name)
            if not rows or f"err_{quantity}" not in rows[0]:
                continue
            sizes, tab = error_table(rows, quantity)
            mean, sd = np.nanmean(tab, 1), np.nanstd(tab, 1)
            ax.errorbar(sizes, mean, yerr=2 * sd, fmt="o-", ms=3, color=color, capsize=2, label=f"{est}")
            fit = window_slope(sizes, tab)
            ax.plot(sizes, np.exp(fit["intercept"]) * sizes ** fit["slope"], "--", color="tab:red", lw=1)
            ax.text(
                0.03,
                0.04 + 0.08 * ESTIMATORS.index(est),
                f"{est}: n^{fit['slope']:.2f}",
                transform=ax.transAxes,
                color=color,
            )
        ax.set(xscale="log", yscale="log", xlabel="n", title=f"{name}: {quantity.upper()}")
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"{quantity.upper()} not computed", transform=ax.transAxes, ha="center")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_fits(runs: dict):
    """Every fit's row, with its estimator and cell, into fits.csv.gz (reproducible bytes; the columns
    in the record's order, new ones after them)."""
    header = []
    if RECORD.exists():
        with gzip.open(RECORD, "rt", newline="") as fh:
            header = next(csv.reader(fh))
    rows = [{"estimator": est, "cell": name, **r} for est in ESTIMATORS for name, rs in runs[est].items() for r in rs]
    if not rows:
        sys.exit(f"no results under {RUNS}: run `python experiments/sigmoid_gating/study.py run sgd` first")
    with (
        open(RECORD, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
        io.TextIOWrapper(gz, newline="") as fh,
    ):
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys([*header, *(k for r in rows for k in r)])))
        writer.writeheader()
        writer.writerows(rows)


def analyze():
    record = recorded()
    runs = {est: runs_of(est, record) for est in ESTIMATORS}
    write_fits(runs)
    wall = walls()
    WALLS.write_text(json.dumps(wall, indent=1, sort_keys=True) + "\n")
    sgd_walls = [wall["sgd"][n] for n in runs["sgd"] if n in wall["sgd"]]
    lines = [
        "# The sigmoid-gating study: results",
        "",
        "Written by `python experiments/sigmoid_gating/study.py analyze` from the runs and the record (every fit: "
        "fits.csv.gz; each run's wall: walls.json).",
        "",
        "## D1 (well-specified cells: the fitted gate is the truth's)",
        "",
        *table("d1", runs),
        "",
        "## D3 (misspecified cells: the loss to the fitted model's best approximation of the truth, G_bar)",
        "",
        *table("d3", runs),
        "",
        "G_bar of each misspecified cell (`best_fit`: least squares on 20 000 noise-free x, the best of k* starts):",
        "",
        *best_fits(runs),
        "",
        "A fit may settle about another arrangement than G_bar's (the start's copy of another atom, a local",
        "minimum of the population risk): its D3 then does not fall to 0. By arrangement:",
        "",
        *d3_patterns(runs),
        "",
        "## The regression function's error |f_hat - f*| (every cell)",
        "",
        *table("fn", runs),
        "",
        "## The two gates on the same data: the regression function's error",
        "",
        *gate_comparison(runs),
        "",
        "## How the least-squares fits stopped",
        "",
        *stops(runs, wall),
        "",
        f"Wall time of the SGD half: {sum(sgd_walls):.0f} s over the {len(sgd_walls)} of its {len(runs['sgd'])} cells "
        "whose run's wall is recorded (walls.json; runs before it kept none: the README gives theirs).",
        "",
    ]
    (HERE / "summary.md").write_text("\n".join(lines))
    figure(
        runs, [f"softmax_{e}_{g}" for e in EXPERTS for g in GATES], HERE / "fig1.png", "Fig. 1: a softmax-gated truth"
    )
    figure(
        runs,
        [f"{t}_{e}_sigmoid" for t in ("regime1", "regime2") for e in EXPERTS],
        HERE / "appendix.png",
        "Appendix: sigmoid-gated truths, sigmoid fits",
    )
    figure(
        runs,
        ["ridge_sigmoid_softmax", "ridge_linear_softmax"],
        HERE / "ridge.png",
        "ICML 2024: ridge vs linear experts",
    )
    print((HERE / "summary.md").read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["run", "analyze"])
    parser.add_argument("estimator", nargs="?", choices=ESTIMATORS)
    parser.add_argument("--cells", nargs="*", default=[], help="run only these cells (<truth>_<expert>_<gate>)")
    args, extra = parser.parse_known_args()  # the rest: more run overrides
    if args.what == "run":
        if args.estimator is None:
            parser.error("run needs an estimator: sgd or lm")
        unknown = set(args.cells) - set(cells())
        if unknown:
            parser.error(f"unknown cells {', '.join(sorted(unknown))}; cells are {', '.join(cells())}")
        run(args.estimator, args.cells, [e for e in extra if e != "--"])
    else:
        analyze()


if __name__ == "__main__":
    main()
