"""The science study (experiments/science/README.md; verdicts in experiments/paper/REPORT.md, "Science"): every run goes through the public
``python -m softmoe_torch.run`` command as a Hydra multirun; this script only lists the runs,
launches them (two at a time, one per core) and analyses their results.csv files.

    python experiments/science/science.py run [--only q1,q2,q3] [--jobs 2]   # resumable: reruns skip finished fits
    python experiments/science/science.py analyze                              # figures, slopes.json, tables.md

Q1  Does the paper's EM, as it was likely run (parameter-change stopping rule), give its slopes?
Q2  Where do the slow rates appear (noise level nu0, sample sizes up to 1e6, Hellinger distance)?
Q3  Beyond the paper: experts that are not strongly identifiable; the input-free gate.

Runs go to experiments/science/runs/<experiment>/ (git-ignored); the analysis writes figures,
slopes.json, tables.md and fits.csv.gz (every fit's row, with its run) to experiments/science/."""

import argparse
import csv
import gzip
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

# experiments/ on sys.path for the helpers every study shares (experiments/studykit.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import studykit  # noqa: E402

from softmoe_torch.metrics.parameters import PAPER_PARAMS  # noqa: E402
from softmoe_torch.metrics.rates import window_slope  # noqa: E402
from softmoe_torch.study.report import error_table  # noqa: E402

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
CASES = "nondistinguishable_eta,nondistinguishable_nu"
# The paper's EM as it was likely run: plain EM (no acceleration), stopped when the largest change of
# any parameter over one iteration is below eps, at most 2000 iterations. Its M-step here is the
# project's warm batched L-BFGS (5 iterations per M-step, curvature kept), not a full BFGS solve:
# the full solve cost 10x more per fit (measured: 19 s a fit at n = 3000), more than this machine allows.
PAPER_EM = ["fit=em", "fit.accelerate=none", "fit.rule=params", "fit.max_iter=2000"]
# EM crawls for up to 2000 iterations here, so Q1 is cut to one decade of n and fewer replications.
Q1_SIZES = ["sweep.sizes=[1000,1778,3162,5623,10000]", "sweep.reps=20"]
Q1_SMALL = ["sweep.sizes=[1000,3162,10000]", "sweep.reps=10"]
SMALL = ["sweep.num_sizes=10"]  # 10 of the paper's sizes 1e3..1e5, 40 replications
HELLINGER = ["hellinger_points=1000"]

# experiment -> (question, overrides of one multirun). Comma-separated values are swept. Listed
# longest first: ``run`` starts them in this order, two at a time.
EXPERIMENTS = {
    # Q1: the converged MLE and the paper-style EM on the same data and starts
    "q1_em": ("q1", [f"setting={CASES}", *PAPER_EM, "fit.tol=1e-6", *Q1_SIZES]),
    # Q1 sensitivity: init scale (eps = 1e-6) and eps (init scale 0.1), beside the MLE per scale
    "q1_scale_em": ("q1", [f"setting={CASES}", *PAPER_EM, "fit.tol=1e-6", "init.scale=0.01,0.03,0.1,0.3", *Q1_SMALL]),
    "q1_eps_em": ("q1", [f"setting={CASES}", *PAPER_EM, "fit.tol=1e-4,1e-8", *Q1_SMALL]),
    "q1_mle": ("q1", [f"setting={CASES}", "fit=newton", *Q1_SIZES]),
    "q1_scale_mle": ("q1", [f"setting={CASES}", "fit=newton", "init.scale=0.01,0.03,0.1,0.3", *Q1_SMALL]),
    # Q2: the noise level nu0 = nu* (10 paper sizes), and sizes up to 1e6 at two noise levels
    "q2_large_n": (
        "q2",
        [
            f"setting={CASES}",
            "fit=newton",
            "setting.pretrained.nu=1e-3,1.0",
            "setting.truth.nu=${setting.pretrained.nu}",
            "sweep.n_max=1000000",
            "sweep.num_sizes=13",
            "sweep.reps=20",
            *HELLINGER,
        ],
    ),
    "q2_noise": (
        "q2",
        [
            f"setting={CASES}",
            "fit=newton",
            "setting.pretrained.nu=1e-3,1e-2,1e-1,1.0",
            "setting.truth.nu=${setting.pretrained.nu}",
            *HELLINGER,
            *SMALL,
        ],
    ),
    # Q3: other experts (both pre-trained and prompt) and the input-free gate
    "q3_affine": (
        "q3",
        [
            "setting=distinguishable,nondistinguishable_eta",
            "fit=newton",
            "+expert=sigmoid_affine",
            *SMALL,
            "sweep.reps=20",
        ],
    ),
    "q3_experts": (
        "q3",
        ["setting=distinguishable,nondistinguishable_eta", "fit=newton", "+expert=sigmoid,gelu,relu", *SMALL],
    ),
    "q3_tanh": ("q3", ["setting=distinguishable,nondistinguishable_eta", "fit=newton", *SMALL]),
    "q3_constant_gate": (
        "q3",
        [
            "setting=distinguishable,nondistinguishable_eta",
            "fit=newton",
            "setting.gate._target_=softmoe_torch.model.gates.ConstantGate",
            "~setting.gate.dim",
            *SMALL,
        ],
    ),
}


def command(name: str) -> list:
    """The public run command of one experiment (a Hydra multirun into RUNS/<name>)."""
    return studykit.run_command([*EXPERIMENTS[name][1], "progress=false"], sweep_dir=RUNS / name)


def run(names: list, jobs: int):
    """Run the experiments, ``jobs`` at a time; each one's output goes to RUNS/<name>.log and its
    wall time, once it succeeds, to wall_seconds.json."""
    RUNS.mkdir(parents=True, exist_ok=True)
    # one thread per run: two runs of two threads each on two cores slow each other down several times
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}
    walls, lock = HERE / "wall_seconds.json", threading.Lock()

    def one(name):
        start = time.perf_counter()
        rc = studykit.launch(command(name), log=RUNS / f"{name}.log", env=env)
        seconds = time.perf_counter() - start
        print(f"{name}: exit {rc} after {seconds:.0f} s (log: {RUNS / name}.log)", flush=True)
        if rc == 0:
            with lock:
                record = json.loads(walls.read_text()) if walls.exists() else {}
                record[name] = round(seconds)
                walls.write_text(json.dumps(record, indent=1, sort_keys=True))
        return rc

    with ThreadPoolExecutor(jobs) as pool:
        codes = list(pool.map(one, names))
    if any(codes):
        sys.exit(1)


# ----------------------------------------------------------------------------- analysis

QUANTITIES = (*PAPER_PARAMS, "hellinger")
LABELS = {"beta": "beta", "exp_tau": "exp(tau)", "eta": "eta", "nu": "nu", "hellinger": "Hellinger"}


def load_runs() -> list:
    """Every finished job: dict(experiment, question, job, overrides {key: value}, rows [dict])."""
    runs = []
    for name, (question, _) in EXPERIMENTS.items():
        for job in sorted((RUNS / name).glob("[0-9]*"), key=lambda p: int(p.name)):
            rows = studykit.read_results(job)
            if rows:
                runs.append(
                    dict(
                        experiment=name,
                        question=question,
                        job=int(job.name),
                        overrides=studykit.read_overrides(job),
                        rows=rows,
                    )
                )
    return runs


def errors_table(rows: list, q: str):
    """Sizes (S,) and the (S, R) errors of quantity q, by the package's error_table (failed fits NaN);
    the Hellinger distance's column, 'hellinger', is read as if it were err_hellinger."""
    if q == "hellinger":
        rows = [{**r, "err_hellinger": r["hellinger"]} for r in rows]
    return error_table(rows, q)


def slope(rows: list, q: str, n_from: float = 0) -> dict | None:
    """Bootstrap slope (95% CI) of log mean error of q on log n over sizes >= n_from; None if absent."""
    out = window_slope(*errors_table(rows, q), lo=n_from)
    return None if out is None else {k: round(v, 3) for k, v in out.items() if k not in ("intercept", "sizes")}


def run_summary(run: dict) -> dict:
    """Slopes of every quantity and the fits' statuses for one job."""
    rows = run["rows"]
    statuses = [r["status"] for r in rows]
    gap_truth = np.array([float(r["mean_loglik"]) - float(r["loglik_truth"]) for r in rows])
    return {
        "slopes": {q: s for q in QUANTITIES if (s := slope(rows, q))},
        "fits": len(rows),
        "converged": sum(r["converged"] == "True" for r in rows),
        "max_iter": statuses.count("max_iter"),
        "at_bound": sum(bool(r["at_bound"]) for r in rows),
        "below_truth": int((gap_truth < -1e-9).sum()),
        "median_iter": float(np.median([int(r["n_iter"]) for r in rows])),
        "sizes": [int(min(int(r["n"]) for r in rows)), int(max(int(r["n"]) for r in rows))],
    }


def pick(runs, experiment, **where):
    """Runs of ``experiment`` whose overrides hold every key=value of ``where`` (keys with '.' as '__')."""
    want = {k.replace("__", "."): v for k, v in where.items()}
    return [
        r
        for r in runs
        if r["experiment"] == experiment and all(_same(r["overrides"].get(k), v) for k, v in want.items())
    ]


def _same(given, wanted) -> bool:
    """An override's value equals ``wanted``, as numbers where both are ('1e-4' == 0.0001)."""
    try:
        return float(given) == float(wanted)
    except (TypeError, ValueError):
        return given == str(wanted)


def paired(em_rows: list, mle_rows: list) -> dict:
    """Per fit (n, rep) of EM beside the MLE on the same data and start: the log-likelihood gap
    (MLE minus EM, per sample), EM's distance moved from the start and whether it stopped short."""
    mle = {(r["n"], r["rep"]): r for r in mle_rows}
    gaps, moved, moved_mle = [], [], []
    for r in em_rows:
        m = mle.get((r["n"], r["rep"]))
        if m is None:
            continue
        gaps.append(float(m["mean_loglik"]) - float(r["mean_loglik"]))
        moved.append(float(r["moved"]))
        moved_mle.append(float(m["moved"]))
    gaps = np.array(gaps)
    return {
        "fits": len(gaps),
        "median_gap": float(np.median(gaps)),
        "q90_gap": float(np.quantile(gaps, 0.9)),
        "short_1e-6": float((gaps > 1e-6).mean()),
        "short_1e-4": float((gaps > 1e-4).mean()),
        "em_above_mle": float((gaps < -1e-9).mean()),
        "median_moved_em": float(np.median(moved)),
        "median_moved_mle": float(np.median(moved_mle)),
    }


def _mean_curve(rows, q):
    ns, table = errors_table(rows, q)
    return ns, np.nanmean(table, axis=1)


def figure_q1(runs, plt):
    """Mean errors of the paper-style EM beside the MLE, per case and parameter (log-log)."""
    cases = CASES.split(",")
    fig, axes = plt.subplots(len(cases), 4, figsize=(15, 6.5), squeeze=False)
    for i, case in enumerate(cases):
        for j, q in enumerate(PAPER_PARAMS):
            ax = axes[i, j]
            for exp, style, label in (("q1_mle", "o-", "newton"), ("q1_em", "s--", "EM, param change < 1e-6")):
                for run in pick(runs, exp, setting=case):
                    ns, mean = _mean_curve(run["rows"], q)
                    s = slope(run["rows"], q)
                    ax.loglog(ns, mean, style, ms=3, label=f"{label}: {s['slope']:+.2f}")
            ax.set_title(f"{case}: {LABELS[q]}", fontsize=9)
            ax.legend(fontsize=7)
            ax.set_xlabel("n")
    fig.suptitle(
        "Q1: paper-style EM (plain EM, stop at max parameter change < 1e-6, at most 2000 iterations) vs the\n"
        "fit by newton (the MLE where it finds it) on the same data and starts; 5 sizes 1e3..1e4 x 20 replications, start = truth + "
        "N(0, 0.1^2); legend: fitted slope"
    )
    fig.tight_layout()
    return fig


def figure_q1_sensitivity(runs, plt):
    """Slope of each parameter against the init scale (EM and MLE) and against eps (EM)."""
    cases = CASES.split(",")
    scales = [0.01, 0.03, 0.1, 0.3]
    fig, axes = plt.subplots(len(cases), 4, figsize=(15, 6.5), squeeze=False)
    for i, case in enumerate(cases):
        for j, q in enumerate(PAPER_PARAMS):
            ax = axes[i, j]
            for exp, marker, label in (("q1_scale_em", "s", "EM, eps 1e-6"), ("q1_scale_mle", "o", "newton")):
                pts = []
                for sc in scales:
                    found = pick(runs, exp, setting=case, init__scale=sc)
                    if found and (s := slope(found[0]["rows"], q)):
                        pts.append((sc, s))
                if pts:
                    x = np.array([p[0] for p in pts])
                    y = np.array([p[1]["slope"] for p in pts])
                    err = np.array([[p[1]["slope"] - p[1]["ci_low"], p[1]["ci_high"] - p[1]["slope"]] for p in pts]).T
                    ax.errorbar(
                        x * (1.06 if marker == "o" else 1), y, yerr=err, fmt=marker + "-", capsize=3, label=label
                    )
            for tol, colour in (("1e-4", "tab:red"), ("1e-8", "tab:green")):
                found = pick(runs, "q1_eps_em", setting=case, fit__tol=tol)
                if found and (s := slope(found[0]["rows"], q)):
                    ax.errorbar(
                        [0.1 * 0.94],
                        [s["slope"]],
                        yerr=[[s["slope"] - s["ci_low"]], [s["ci_high"] - s["slope"]]],
                        fmt="^",
                        color=colour,
                        capsize=3,
                        label=f"EM, eps {tol} (scale 0.1)",
                    )
            ax.set_xscale("log")
            ax.set_title(f"{case}: {LABELS[q]}", fontsize=9)
            ax.set_xlabel("init scale")
            ax.set_ylabel("slope")
            ax.legend(fontsize=7)
    fig.suptitle(
        "Q1 sensitivity: fitted slope (95% bootstrap CI) against the start's distance from the truth;\n"
        "3 sizes 1e3..1e4 x 10 replications per point"
    )
    fig.tight_layout()
    return fig


def figure_q2_noise(runs, plt):
    """Slope of each quantity against the noise level nu0 (paper sizes)."""
    cases = CASES.split(",")
    fig, axes = plt.subplots(1, len(cases), figsize=(13, 4.5), squeeze=False)
    for i, case in enumerate(cases):
        ax = axes[0, i]
        found = sorted(
            pick(runs, "q2_noise", setting=case), key=lambda r: float(r["overrides"]["setting.pretrained.nu"])
        )
        for k, q in enumerate(QUANTITIES):
            pts = [(float(r["overrides"]["setting.pretrained.nu"]), slope(r["rows"], q)) for r in found]
            pts = [(nu, p) for nu, p in pts if p is not None]
            if not pts:
                continue
            nus, y = np.array([nu for nu, _ in pts]), np.array([p["slope"] for _, p in pts])
            err = np.array([[p["slope"] - p["ci_low"], p["ci_high"] - p["slope"]] for _, p in pts]).T
            ax.errorbar(nus * 1.07**k, y, yerr=err, fmt="o-", capsize=3, label=LABELS[q])
        for ref, ls in ((-0.5, ":"), (-0.375, "--"), (-0.25, "-.")):
            ax.axhline(ref, color="grey", ls=ls, lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("nu0 = nu* (noise variance)")
        ax.set_ylabel("slope over n in [1e3, 1e5]")
        ax.set_title(case, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle("Q2: slopes against the noise level (10 sizes x 40 replications, newton); grey: -1/2, -3/8, -1/4")
    fig.tight_layout()
    return fig


def figure_q2_large_n(runs, plt):
    """Mean errors and the Hellinger distance up to n = 1e6, at two noise levels."""
    found = sorted(
        pick(runs, "q2_large_n"),
        key=lambda r: (r["overrides"]["setting"], float(r["overrides"]["setting.pretrained.nu"])),
    )
    fig, axes = plt.subplots(1, len(found), figsize=(4.2 * max(len(found), 1), 4.2), squeeze=False)
    for ax, run in zip(axes[0], found):
        for q in QUANTITIES:
            ns, mean = _mean_curve(run["rows"], q)
            last = slope(run["rows"], q, n_from=ns.max() / 10)
            ax.loglog(ns, mean, "o-", ms=3, label=f"{LABELS[q]}: last decade {last['slope']:+.2f}")
        ax.set_title(f"{run['overrides']['setting']}, nu0 = {run['overrides']['setting.pretrained.nu']}", fontsize=9)
        ax.set_xlabel("n")
        ax.legend(fontsize=7)
    fig.suptitle(
        "Q2: mean errors up to n = 1e6 (13 sizes x 20 replications, newton); legend: slope over the last decade"
    )
    fig.tight_layout()
    return fig


def figure_q3(runs, plt):
    """Slopes per expert family and gate (10 sizes), per setting."""
    variants = [
        ("tanh", "q3_tanh", {}),
        *((e, "q3_experts", {"expert": e}) for e in ("sigmoid", "gelu", "relu")),
        ("sigmoid(a^T x + b)", "q3_affine", {}),
        ("tanh, constant gate", "q3_constant_gate", {}),
    ]
    settings = ["distinguishable", "nondistinguishable_eta"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    for ax, setting in zip(axes, settings):
        for k, (label, exp, where) in enumerate(variants):
            found = pick(runs, exp, setting=setting, **where)
            if not found:
                continue
            for j, q in enumerate(PAPER_PARAMS):
                s = slope(found[0]["rows"], q)
                if s:
                    ax.errorbar(
                        j + 0.12 * k - 0.3,
                        s["slope"],
                        yerr=[[s["slope"] - s["ci_low"]], [s["ci_high"] - s["slope"]]],
                        fmt="o",
                        color=f"C{k}",
                        capsize=2,
                        label=label if j == 3 else None,
                    )
        for ref in (-0.5, -0.375, -0.25):
            ax.axhline(ref, color="grey", ls=":", lw=0.8)
        ax.set_xticks(range(4), [LABELS[q] for q in PAPER_PARAMS])
        ax.set_ylabel("slope (95% CI)")
        ax.set_title(setting)
        ax.legend(fontsize=7)
    fig.suptitle(
        "Q3: slopes by expert family and gate (10 sizes 1e3..1e5; 40 replications, 20 for sigmoid(a^T x + b); newton)"
    )
    fig.tight_layout()
    return fig


def label(run: dict) -> str:
    """The overrides that distinguish a job within its experiment."""
    shown = ("setting", "init.scale", "fit.tol", "setting.pretrained.nu", "expert")
    return ", ".join(f"{k}={v}" for k, v in run["overrides"].items() if k in shown)


def table(runs: list, n_from_decade: bool = False) -> list:
    """Markdown lines: one row per job, the slope (95% CI) of every quantity and the statuses."""
    head = ["job", *(LABELS[q] for q in QUANTITIES), "converged", "max_iter", "at bound", "below truth", "median iter"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        s = run_summary(run)
        if n_from_decade:
            n_from = s["sizes"][1] / 10
            s["slopes"] = {q: x for q in QUANTITIES if (x := slope(run["rows"], q, n_from))}
        cells = [
            label(run),
            *(studykit.fmt(s["slopes"].get(q)) for q in QUANTITIES),
            f"{s['converged']}/{s['fits']}",
            str(s["max_iter"]),
            str(s["at_bound"]),
            str(s["below_truth"]),
            f"{s['median_iter']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def analyze():
    """Write figures, slopes.json, tables.md and fits.csv.gz from the finished runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_runs()
    if not runs:
        sys.exit(f"no finished runs under {RUNS}: run `python experiments/science/science.py run` first")
    have = {r["experiment"] for r in runs}
    figures = {
        "q1_em_vs_mle": (figure_q1, {"q1_em", "q1_mle"}),
        "q1_sensitivity": (figure_q1_sensitivity, {"q1_scale_em", "q1_scale_mle"}),
        "q2_noise": (figure_q2_noise, {"q2_noise"}),
        "q2_large_n": (figure_q2_large_n, {"q2_large_n"}),
        "q3_experts": (figure_q3, {"q3_tanh", "q3_experts"}),
    }
    for name, (draw, needs) in figures.items():
        if needs <= have:
            fig = draw(runs, plt)
            fig.savefig(HERE / f"{name}.png", dpi=110)
            plt.close(fig)
    summary = {f"{r['experiment']}/{r['job']}": {"overrides": r["overrides"], **run_summary(r)} for r in runs}
    walls = json.loads((HERE / "wall_seconds.json").read_text()) if (HERE / "wall_seconds.json").exists() else {}
    lines = [
        "# Science study: slopes (95% bootstrap CIs over replications) and fit statuses",
        "",
        "Generated by `python experiments/science/science.py analyze`; every run's command is in EXPERIMENTS there.",
        "'below truth': fits whose log-likelihood is below the true parameters' (the MLE was not found).",
        "",
    ]
    for name in EXPERIMENTS:
        found = [r for r in runs if r["experiment"] == name]
        if not found:
            continue
        wall = f" (wall {walls[name]} s)" if name in walls else ""
        lines += [f"## {name}{wall}", "", "`" + " ".join(EXPERIMENTS[name][1]) + "`", "", *table(found), ""]
        if name == "q2_large_n":
            lines += ["Over the last decade only (n >= n_max / 10):", "", *table(found, n_from_decade=True), ""]
    q1 = {}
    for case in CASES.split(","):
        em, mle = pick(runs, "q1_em", setting=case), pick(runs, "q1_mle", setting=case)
        if em and mle:
            q1[case] = paired(em[0]["rows"], mle[0]["rows"])
    for name, em_exp, mle_exp in (("q1_scale", "q1_scale_em", "q1_scale_mle"),):
        for r in pick(runs, em_exp):
            twin = pick(runs, mle_exp, setting=r["overrides"]["setting"], init__scale=r["overrides"]["init.scale"])
            if twin:
                q1[f"{name}/{label(r)}"] = paired(r["rows"], twin[0]["rows"])
    if q1:
        lines += [
            "## Q1: paper-style EM against newton on the same data and start, fit by fit",
            "",
            "gap: newton minus EM mean log-likelihood (per sample); moved: largest parameter change from the start.",
            "",
            "| pair | fits | median gap | 90% gap | gap > 1e-6 | gap > 1e-4 | EM above newton | median moved EM | median moved newton |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for k, p in q1.items():
            lines.append(
                f"| {k} | {p['fits']} | {p['median_gap']:.2e} | {p['q90_gap']:.2e} | {p['short_1e-6']:.0%} | "
                f"{p['short_1e-4']:.0%} | {p['em_above_mle']:.0%} | {p['median_moved_em']:.3f} | {p['median_moved_mle']:.3f} |"
            )
    (HERE / "tables.md").write_text("\n".join(lines) + "\n")
    (HERE / "slopes.json").write_text(json.dumps({"runs": summary, "q1_pairs": q1, "wall_seconds": walls}, indent=1))
    with gzip.open(HERE / "fits.csv.gz", "wt", newline="") as fh:
        keys = ["experiment", "job", "overrides", *runs[0]["rows"][0].keys()]
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for r in runs:
            over = " ".join(f"{k}={v}" for k, v in r["overrides"].items())
            writer.writerows(
                {"experiment": r["experiment"], "job": r["job"], "overrides": over, **row} for row in r["rows"]
            )
    print(f"wrote {HERE}/tables.md, slopes.json, fits.csv.gz and the figures")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["run", "analyze"])
    parser.add_argument("--only", default="q1,q2,q3", help="questions (q1,q2,q3) or experiment names, comma-separated")
    parser.add_argument("--jobs", type=int, default=2, help="experiments run at the same time")
    args = parser.parse_args(argv)
    if args.what == "analyze":
        return analyze()
    chosen = set(args.only.split(","))
    unknown = chosen - set(EXPERIMENTS) - {q for q, _ in EXPERIMENTS.values()}
    if unknown:
        parser.error(f"unknown --only {sorted(unknown)}; choose from q1, q2, q3 or {', '.join(EXPERIMENTS)}")
    run([n for n, (q, _) in EXPERIMENTS.items() if n in chosen or q in chosen], args.jobs)


if __name__ == "__main__":
    main()
