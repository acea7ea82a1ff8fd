"""Summaries of a sweep: slopes with bootstrap CIs against theory and the paper, the paper-style
figure, slopes.json and report.md."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..metrics.rates import bootstrap_slope  # noqa: E402


def error_table(rows, param: str):
    """rows (dicts from results.csv) -> (sizes (S,), errors (S, R) with NaN for failed fits)."""
    sizes = sorted({int(r["n"]) for r in rows})
    reps = sorted({int(r["rep"]) for r in rows})
    table = np.full((len(sizes), len(reps)), np.nan)
    for r in rows:
        if not str(r["status"]).startswith(("failed", "error")):
            table[sizes.index(int(r["n"])), reps.index(int(r["rep"]))] = float(r[f"err_{param}"])
    return np.array(sizes), table


def verdict(fit: dict, theory, paper, reference: str = "paper") -> str:
    """One line: which reference slopes (theory's, ``reference``'s published one) lie inside the 95% interval."""
    inside = lambda s: s is not None and fit["ci_low"] <= s <= fit["ci_high"]  # noqa: E731
    if theory is None:
        return "no theory" + (
            "" if paper is None else f"; {'agrees' if inside(paper) else 'disagrees'} with the {reference}"
        )
    if inside(theory) and inside(paper):
        return f"agrees with theory and the {reference}"
    if inside(theory):
        return "agrees with theory" + ("" if paper is None else f", not the {reference}")
    if inside(paper):
        return f"agrees with the {reference}, not theory"
    return "agrees with neither"


def summarize(rows, setting, n_boot: int = 2000, seed: int = 0) -> dict:
    """Per quantity of ``setting`` (a handle, ``settings.setting.load_setting``): slope, 95% CI,
    theory and published slopes, verdict; plus fit counts."""
    paper, theories = setting.reference_slopes(), setting.theory_slopes(rows)
    out = {"setting": setting.name, "n_fits": len(rows), "reference": setting.reference, "params": {}}
    out["failed"] = sum(str(r["status"]).startswith(("failed", "error")) for r in rows)
    out["not_converged"] = sum(not r["converged"] for r in rows)
    out["at_bound"] = sum(bool(r.get("at_bound")) for r in rows)
    for p in setting.quantities():
        sizes, table = error_table(rows, p)
        usable = ~np.all(np.isnan(table), axis=1)
        if usable.sum() < 2:
            raise ValueError("a slope needs at least two sample sizes with finished fits")
        fit = bootstrap_slope(sizes[usable], table[usable], n_boot=n_boot, seed=seed)
        theory, paper_p = theories[p], paper.get(p)
        out["params"][p] = {
            **fit,
            "theory": theory,
            "paper": paper_p,
            "verdict": verdict(fit, theory, paper_p, setting.reference),
        }
    return out


COLUMNS_PER_ROW = 4  # panels per row of the figure


def figure(rows, summary: dict, title: str, labels: dict):
    """One log-log panel per reported quantity (``labels`` their titles): mean error per n with a 10-90% band over
    replications, the fitted power law (dashed) and the theoretical rate through the fitted line's centre (dotted)."""
    params = list(summary["params"])
    ncols = min(len(params), COLUMNS_PER_ROW)
    nrows = -(-len(params) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.6 * nrows), constrained_layout=True, squeeze=False)
    for ax in axes.flat[len(params) :]:
        ax.set_visible(False)
    for ax, p in zip(axes.flat, params):
        sizes, table = error_table(rows, p)
        s = summary["params"][p]
        mean = np.nanmean(table, axis=1)
        lo, hi = np.nanquantile(table, [0.1, 0.9], axis=1)
        ax.fill_between(sizes, lo, hi, color="C0", alpha=0.2, label="10-90% of reps")
        ax.plot(sizes, mean, "o", color="C0", ms=4, label="mean error")
        fitted = np.exp(s["intercept"]) * sizes ** s["slope"]
        ax.plot(
            sizes,
            fitted,
            "--",
            color="C1",
            label=f"fit: slope {s['slope']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}]",
        )
        centre = np.exp(np.mean(np.log(sizes)))
        anchor = np.exp(s["intercept"]) * centre ** s["slope"]
        if s["theory"] is not None:
            ax.plot(sizes, anchor * (sizes / centre) ** s["theory"], ":", color="k", label=f"theory: {s['theory']:.3g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n")
        ax.set_title(labels[p])
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig


def record_run(out_dir, seconds: float) -> list:
    """Append this run's wall time to out_dir/runs.json (atomically); returns every run's
    record [{"seconds": ...}], oldest first (interrupted runs included)."""
    path = Path(out_dir) / "runs.json"
    try:
        runs = json.loads(path.read_text()) if path.exists() else []
    except json.JSONDecodeError:
        runs = []  # written atomically, so only a hand-edited file gets here; start it again
    runs.append({"seconds": round(seconds, 3)})
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(runs, indent=1))
    tmp.replace(path)
    return runs


def wall_time_line(runs: list) -> str:
    """One sentence on compute time: the last run's and the total over all runs into the directory."""
    last, total = runs[-1], sum(r["seconds"] for r in runs)
    return f"Wall time: last run {last['seconds']:.1f} s; all {len(runs)} runs into this directory {total:.1f} s."


def markdown(summary: dict, runs: list | None = None) -> str:
    """report.md text for one setting; ``runs`` as returned by record_run."""
    lines = [f"# {summary['setting']}", ""]
    lines.append(
        f"{summary['n_fits']} fits; {summary['failed']} failed; {summary['not_converged']} did not converge; "
        f"{summary['at_bound']} ended on a bound of the parameter space (see the at_bound column)."
    )
    if runs:
        lines.append(wall_time_line(runs))
    lines += [
        "",
        f"| parameter | fitted slope | 95% CI | theory | {summary['reference']} | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for p, s in summary["params"].items():
        paper = "-" if s["paper"] is None else f"{s['paper']:.2f}"
        theory = "-" if s["theory"] is None else f"{s['theory']:.3f}"
        lines.append(
            f"| {p} | {s['slope']:.3f} | [{s['ci_low']:.3f}, {s['ci_high']:.3f}] "
            f"| {theory} | {paper} | {s['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def title(rows, setting_name: str, method: str) -> str:
    """What a figure shows: setting, method, replications and sample sizes."""
    sizes = sorted({int(r["n"]) for r in rows})
    reps = len({int(r["rep"]) for r in rows})
    return f"{setting_name}, fit={method}: {reps} replications x {len(sizes)} sample sizes n = {sizes[0]}..{sizes[-1]}"


def write_report(rows, setting, out_dir, runs=None, method: str = "em", n_boot: int = 2000):
    """Write slopes.json, report.md, figure.png and figure.pdf into out_dir for ``setting`` (a
    handle); returns (summary, fig)."""
    out_dir = Path(out_dir)
    summary = summarize(rows, setting, n_boot=n_boot)
    (out_dir / "slopes.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "report.md").write_text(markdown(summary, runs))
    fig = figure(rows, summary, title(rows, setting.name, method), setting.labels)
    fig.savefig(out_dir / "figure.png", dpi=110)
    fig.savefig(out_dir / "figure.pdf")
    return summary, fig


def terminal_table(summary: dict) -> str:
    """A plain-text slope table for the end of a run."""
    width = max(8, *(len(p) for p in summary["params"]))
    ref = summary.get("reference", "paper")
    head = f"{'param':{width}} {'slope':>7} {'95% CI':>17} {'theory':>7} {ref:>7}  verdict"
    lines = [f"slopes for {summary['setting']}:", head]
    for p, s in summary["params"].items():
        paper = "-" if s["paper"] is None else f"{s['paper']:.2f}"
        theory = "-" if s["theory"] is None else f"{s['theory']:.3f}"
        ci = f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]"
        lines.append(f"{p:{width}} {s['slope']:7.3f} {ci:>17} {theory:>7} {paper:>7}  {s['verdict']}")
    return "\n".join(lines)
