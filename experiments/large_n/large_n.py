"""The slow rates where they live: both non-distinguishable cases over 15 log-spaced sizes from
1e4 to 1e7 x 40 replications, by the fastest method (newton), and replication 0 refitted by the
default EM at the two largest sizes. Every run goes through the public ``python -m softmoe_torch.run``
command; this script lists the runs, launches them one after another (each uses every core) and
analyses their results.csv files.

    python experiments/large_n/large_n.py run [--only NAME,...] [--reps R]   # resumable: a rerun skips finished fits,
                                                                             # one with a larger R adds replications
    python experiments/large_n/large_n.py analyze                            # fits.csv.gz, slopes.json, tables.md, figure

Runs go to experiments/large_n/runs/<name>/ (git-ignored), with a log per invocation and
<name>.usage.json (per invocation: the command, wall seconds, peak memory summed over the command's
processes, load averages before and after); the analysis writes into experiments/large_n/."""

import argparse
import csv
import gzip
import io
import json
import sys
from pathlib import Path

import numpy as np

# experiments/ on sys.path for the helpers every study shares (experiments/studykit.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import studykit  # noqa: E402

from softmoe_torch.metrics.parameters import PAPER_PARAMS  # noqa: E402
from softmoe_torch.metrics.rates import window_slope  # noqa: E402
from softmoe_torch.settings.setting import Setting  # noqa: E402
from softmoe_torch.study.report import error_table  # noqa: E402
from softmoe_torch.study.store import columns  # noqa: E402

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
CASES = ("nondistinguishable_eta", "nondistinguishable_nu")
SWEEP = dict(n_min=10_000, n_max=10_000_000, num_sizes=15, reps=40)
SIZES = sorted(
    {int(round(n)) for n in np.logspace(np.log10(SWEEP["n_min"]), np.log10(SWEEP["n_max"]), SWEEP["num_sizes"])}
)
EM_SIZES, EM_REPS = SIZES[-2:], 1  # the EM check: replication 0 at the two largest sizes


def overrides(name: str, reps: int = SWEEP["reps"]) -> list:
    """The run command's overrides of run ``name`` (<setting>_newton or <setting>_em); ``reps``
    replications for a newton run (a rerun with more adds the missing ones)."""
    setting, method = name.rsplit("_", 1)
    if method == "newton":
        sweep = [f"sweep.{k}={v}" for k, v in {**SWEEP, "reps": reps}.items()]
    else:
        sweep = [f"sweep.sizes=[{','.join(map(str, EM_SIZES))}]", f"sweep.reps={EM_REPS}"]
    return [f"setting={setting}", f"fit={method}", *sweep]


NAMES = [f"{case}_{method}" for method in ("newton", "em") for case in CASES]


def command(name: str, reps: int = SWEEP["reps"]) -> list:
    return studykit.run_command([*overrides(name, reps), "progress=false"], run_dir=RUNS / name)


def run(names: list, reps: int):
    """Run each named study in turn through LAUNCHER (wall time, peak memory of the process tree);
    each invocation's record is added to <name>.usage.json."""
    RUNS.mkdir(parents=True, exist_ok=True)
    for name in names:
        before = studykit.load_average()
        usage, log = RUNS / f"{name}.usage.json", RUNS / f"{name}.log"
        record = studykit.measured(command(name, reps), log.with_suffix(f".{len(_records(usage))}.log"))
        record.update(
            command=" ".join(["python", *command(name, reps)[1:]]),
            load_before=before,
            load_after=studykit.load_average(),
        )
        usage.write_text(json.dumps([*_records(usage), record], indent=1))
        print(
            f"{name}: exit {record['returncode']} after {record['wall_seconds']:.0f} s, "
            f"peak {record['tree_kib'] / 2**20:.1f} GiB",
            flush=True,
        )
        if record["returncode"] != 0:
            sys.exit(f"{name} failed; see {log}")


def _records(usage: Path) -> list:
    """The invocations recorded in a run's usage file ([] before the first)."""
    return json.loads(usage.read_text()) if usage.exists() else []


# ----------------------------------------------------------------------------- analysis

THEORY = {"beta": -3 / 8, "exp_tau": -1 / 4, "eta": -3 / 8, "nu": -3 / 8}  # Table 1, D ~ n^-1/8
LABELS = {"beta": "beta", "exp_tau": "exp(tau)", "eta": "eta", "nu": "nu"}
RANGES = {"1e4..1e7": (1e4, 1e7), "1e5..1e7": (1e5, 1e7), "1e6..1e7": (1e6, 1e7)}
WINDOW = 5  # sizes in a local slope (0.86 of a decade)


def load(name: str) -> list:
    """The rows of run ``name``'s results.csv, [] if it has none."""
    return studykit.read_results(RUNS / name)


def slope_over(rows: list, q: str, lo: float, hi: float) -> dict | None:
    """Bootstrap slope (95% CI over replications) of log mean error of q on log n, sizes in [lo, hi]."""
    out = window_slope(*error_table(rows, q), lo=lo, hi=hi)
    return None if out is None else {k: out[k] for k in ("slope", "ci_low", "ci_high", "sizes")}


def local_slopes(rows: list, q: str) -> list:
    """[(geometric mean n of the window, slope dict)] over windows of WINDOW consecutive sizes."""
    ns, _ = error_table(rows, q)
    return [
        (float(np.exp(np.log(ns[i : i + WINDOW]).mean())), slope_over(rows, q, ns[i], ns[i + WINDOW - 1]))
        for i in range(len(ns) - WINDOW + 1)
    ]


def bound_share(rows: list) -> dict:
    """{n: share of fits that ended with a parameter on a bound}, and which parameters."""
    out = {}
    for n in sorted({int(r["n"]) for r in rows}):
        at = [r["at_bound"] for r in rows if int(r["n"]) == n]
        out[n] = {"share": sum(bool(a) for a in at) / len(at), "params": sorted({p for a in at for p in a.split()})}
    return out


def em_check(case: str) -> dict | None:
    """EM beside newton on the same data and starts: per fit, newton's mean log-likelihood minus
    EM's (per sample) and the largest difference of the four errors (absolute, and relative to
    newton's error)."""
    em = load(f"{case}_em")
    newton = {(r["n"], r["rep"]): r for r in load(f"{case}_newton")}
    pairs = [(r, newton[(r["n"], r["rep"])]) for r in em if (r["n"], r["rep"]) in newton]
    if not pairs:
        return None
    return {
        "fits": [
            {
                "n": int(e["n"]),
                "rep": int(e["rep"]),
                "em_status": e["status"],
                "em_iter": int(e["n_iter"]),
                "newton_status": m["status"],
                "newton_iter": int(m["n_iter"]),
                "gap_per_sample": float(m["mean_loglik"]) - float(e["mean_loglik"]),
                "max_error_diff": max(abs(float(m[f"err_{q}"]) - float(e[f"err_{q}"])) for q in PAPER_PARAMS),
                "max_rel_error_diff": max(
                    abs(float(m[f"err_{q}"]) - float(e[f"err_{q}"])) / float(m[f"err_{q}"]) for q in PAPER_PARAMS
                ),
                "em_seconds": float(e["seconds"]),
                "newton_seconds": float(m["seconds"]),
            }
            for e, m in pairs
        ]
    }


def figure(results: dict, plt):
    """Local slopes (band: 95% bootstrap CI) per error and setting, theory and n^-1/2 drawn; the
    share of fits on a bound per size."""
    fig, axes = plt.subplots(len(CASES), 5, figsize=(19, 7), squeeze=False)
    for i, case in enumerate(CASES):
        rows = results[case]["rows"]
        reps = len({r["rep"] for r in rows})
        for j, q in enumerate(PAPER_PARAMS):
            ax = axes[i, j]
            pts = [(n, s) for n, s in local_slopes(rows, q) if s]
            x = np.array([n for n, _ in pts])
            ax.plot(
                x, [s["slope"] for _, s in pts], "o-", ms=3, color="tab:blue", label=f"local slope ({WINDOW} sizes)"
            )
            ax.fill_between(
                x, [s["ci_low"] for _, s in pts], [s["ci_high"] for _, s in pts], color="tab:blue", alpha=0.2
            )
            ax.axhline(THEORY[q], color="tab:red", ls=":", label=f"theory {THEORY[q]:+.3f}")
            ax.axhline(-0.5, color="grey", ls="--", lw=0.8, label="parametric -1/2")
            ax.set_xscale("log")
            ax.set_title(f"{case}: {LABELS[q]} ({reps} replications)", fontsize=9)
            ax.set_xlabel("n (window centre)")
            ax.legend(fontsize=7, loc="lower left")
        share = results[case]["bound_share"]
        axes[i, 4].semilogx(list(share), [v["share"] for v in share.values()], "s-", ms=3, color="tab:purple")
        axes[i, 4].set_ylim(-0.02, 1.02)
        axes[i, 4].set_title(f"{case}: share of fits on a bound", fontsize=9)
        axes[i, 4].set_xlabel("n")
    fig.suptitle(
        f"Local slopes of the mean errors over windows of {WINDOW} consecutive sizes (15 sizes 1e4..1e7, "
        "newton); band: 95% bootstrap CI over replications"
    )
    fig.tight_layout()
    return fig


def tables(results: dict, usage: dict) -> str:
    lines = [
        "# Large n: both non-distinguishable cases, 15 sizes 1e4..1e7 (newton)",
        "",
        "Slopes of log(mean error) on log n, 95% bootstrap CI over replications; theory from Table 1 with D ~ n^-1/8.",
        "",
    ]
    for case in CASES:
        rows = results[case]["rows"]
        lines += [
            f"## {case} ({len({r['rep'] for r in rows})} replications)",
            "",
            "| error | " + " | ".join(RANGES) + " | theory |",
            "|---|" + "---|" * (len(RANGES) + 1),
        ]
        for q in PAPER_PARAMS:
            cells = [studykit.fmt(results[case]["slopes"][q][r]) for r in RANGES]
            lines.append(f"| {LABELS[q]} | " + " | ".join(cells) + f" | {THEORY[q]:+.3f} |")
        statuses = {}
        for r in rows:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        lines += [
            "",
            f"Fits: {len(rows)}; statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())),
            "",
            "Local slopes (window of 5 sizes; centre n):",
            "",
            "| centre n | " + " | ".join(LABELS[q] for q in PAPER_PARAMS) + " |",
            "|---|" + "---|" * len(PAPER_PARAMS),
        ]
        local = {q: local_slopes(rows, q) for q in PAPER_PARAMS}
        for k, (n, _) in enumerate(local[PAPER_PARAMS[0]]):
            lines.append(f"| {n:.3g} | " + " | ".join(studykit.fmt(local[q][k][1]) for q in PAPER_PARAMS) + " |")
        lines += [
            "",
            "Share of fits with a parameter on a bound, per n:",
            "",
            "| n | share | parameters |",
            "|---|---|---|",
        ]
        lines += [
            f"| {n} | {v['share']:.3f} | {' '.join(v['params']) or '-'} |"
            for n, v in results[case]["bound_share"].items()
        ]
        check = results[case]["em_check"]
        if check:
            lines += [
                "",
                "EM (the default, Anderson-accelerated) beside newton on the same data and starts:",
                "",
                "| n | rep | EM status (iterations) | newton status (iterations) | newton - EM log-lik per sample "
                "| largest error difference (relative to newton's error) | EM s | newton s |",
                "|---|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {f['n']} | {f['rep']} | {f['em_status']} ({f['em_iter']}) | {f['newton_status']} ({f['newton_iter']}) "
                f"| {f['gap_per_sample']:.2e} | {f['max_error_diff']:.2e} ({f['max_rel_error_diff']:.0%}) | {f['em_seconds']:.0f} | {f['newton_seconds']:.1f} |"
                for f in check["fits"]
            ]
        lines.append("")
    lines += [
        "## Runs",
        "",
        "| run | invocation | wall s | peak memory (GiB, all processes) | load average before ; after | command |",
        "|---|---|---|---|---|---|",
    ]
    for name, records in usage.items():
        for i, u in enumerate(records):
            lines.append(
                f"| {name} | {i + 1} | {u['wall_seconds']:.0f} | {u['tree_kib'] / 2**20:.2f} | "
                f"{'/'.join(f'{v:.1f}' for v in u['load_before'])} ; {'/'.join(f'{v:.1f}' for v in u['load_after'])} "
                f"| `{u['command'].replace(str(RUNS), 'experiments/large_n/runs')}` |"
            )
    lines.append("")
    return "\n".join(lines)


def analyze():
    """Write fits.csv.gz, slopes.json, tables.md and local_slopes.png from the finished runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {}
    for case in CASES:
        rows = load(f"{case}_newton")
        if not rows:
            sys.exit(
                f"no results for {case}_newton under {RUNS}: run `python experiments/large_n/large_n.py run` first"
            )
        results[case] = {
            "rows": rows,
            "bound_share": bound_share(rows),
            "em_check": em_check(case),
            "slopes": {q: {r: slope_over(rows, q, *RANGES[r]) for r in RANGES} for q in PAPER_PARAMS},
            "local": {q: local_slopes(rows, q) for q in PAPER_PARAMS},
        }
    usage = {name: _records(RUNS / f"{name}.usage.json") for name in NAMES if (RUNS / f"{name}.usage.json").exists()}
    figure(results, plt).savefig(HERE / "local_slopes.png", dpi=110)
    (HERE / "tables.md").write_text(tables(results, usage))
    summary = {case: {k: v for k, v in r.items() if k != "rows"} for case, r in results.items()}
    summary["runs"] = {
        name: {
            "wall_seconds": round(sum(u["wall_seconds"] for u in records), 1),
            "peak_gib": round(max(u["tree_kib"] for u in records) / 2**20, 2),
            "invocations": len(records),
        }
        for name, records in usage.items()
    }
    (HERE / "slopes.json").write_text(json.dumps(summary, indent=1, default=str))
    with (
        open(HERE / "fits.csv.gz", "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
        io.TextIOWrapper(gz, newline="") as fh,
    ):  # mtime 0: the same rows give the same bytes
        writer = csv.writer(fh)
        names = columns(Setting)
        writer.writerow(["run", *names])
        writer.writerows([name, *(row[c] for c in names)] for name in NAMES for row in load(name))
    print(f"wrote {HERE}/tables.md, slopes.json, fits.csv.gz and local_slopes.png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["run", "analyze"])
    parser.add_argument("--only", default=",".join(NAMES), help="comma-separated runs of: " + ", ".join(NAMES))
    parser.add_argument("--reps", type=int, default=SWEEP["reps"], help="replications of the newton runs (default 40)")
    args = parser.parse_args(argv)
    if args.what == "run":
        run(args.only.split(","), args.reps)
    else:
        analyze()


if __name__ == "__main__":
    main()
