"""Calibration and power of the contamination test (python -m softmoe_torch.bootstrap_test's procedure: newton,
2 random starts, the alternative capped at 10 iterations, variance floor 0.1 nu0, unconverged
refits counted conservatively), for the distinguishable setting's f0 (Laplace) and the
non-distinguishable one's (Gaussian), X ~ N(0, I_8).

    python experiments/contamination/contamination_study.py calibrate [--M 1000] [--B 99] [--naive 200]
    python experiments/contamination/contamination_study.py power [--reps 200] [--null 300]
    python experiments/contamination/contamination_study.py analyze

- ``calibrate``: per setting and n in {1e3, 1e4}, M data sets drawn under H0, each tested by
  ``contamination_test`` itself with B bootstrap refits: the empirical size at alpha = 0.05 and
  0.01 with binomial (Wilson) 95% intervals. On the first ``--naive`` of the same data sets, the
  naive test: LR of the MLE (3 random starts, to convergence, the same floor) against
  chi-square with the 18 free parameters.
- ``power``: per setting and n in {1e3, 1e4, 1e5}, the rejection rate of the test at 0.05 with
  the 95% quantile of ``--null`` H0 statistics at that n as its critical value (the bootstrap
  test's, unconditional), against contamination strength: tau* such that n E[s(x)] = m expected
  contaminated observations, m = 1/4 .. 8 (the setting's truth otherwise); and in the
  non-distinguishable setting against eta* = eta0 (1 + delta) at the setting's tau*, with the
  delta where power reaches 0.8 per n and its slope in n, each with a bootstrap interval.
- ``analyze``: experiments/contamination/calibration.md, power.md, power.png, delta.png from the JSONs.

Calibration is saved every 10 data sets and power a cell at a time (calibration.json, power.json in
experiments/contamination/), so a rerun does only what is missing. Work is spread over ``--workers`` processes of one torch thread each."""

import argparse
import json
import math
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from scipy import stats

# experiments/ on sys.path for the helpers every study shares (experiments/studykit.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import studykit  # noqa: E402
from studykit import model_with, response, setting_of  # noqa: E402

from softmoe_torch import Estimator  # noqa: E402
from softmoe_torch.bootstrap_test import procedure  # noqa: E402
from softmoe_torch.lrt import contamination_statistics, contamination_test, with_variance_floor  # noqa: E402
from softmoe_torch.metrics.intervals import wilson  # noqa: E402
from softmoe_torch.settings.configs import register_resolvers  # noqa: E402
from softmoe_torch.settings.setting import Setting  # noqa: E402
from softmoe_torch.study.simulate import data_seed  # noqa: E402

HERE = Path(__file__).resolve().parent
SETTINGS = ("distinguishable", "nondistinguishable_eta")
FREE_PARAMETERS = 18  # beta (8), tau, eta (8), nu
MASSES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # expected contaminated observations n E[s(x)]
DELTA_1000 = 0.08  # the pilot's delta of power 0.8 at n = 1e3; the grid at n is centred on DELTA_1000 (1e3 / n)^(1/2)
DELTA_STEPS = (0.25, 0.5, 0.7071, 1.0, 1.4142, 2.0, 4.0)


def test_procedure(setting: Setting) -> Estimator:
    """The test command's estimator for this setting (conf/test_data.yaml's defaults)."""
    cfg = studykit.compose([f"setting={setting.name}", "data=none"], "test_data")
    return procedure(cfg, setting.model())


def draw(setting: Setting, n: int, truth: dict | None, index: int, tag: str):
    """Data set ``index`` of a cell: X ~ N(0, I); y under H0 (truth None) or the setting's truth at
    n with the given parameters replaced; and the null's log-likelihood."""
    g = torch.Generator().manual_seed(data_seed(17, f"{setting.name}/{tag}", n, index))
    X = torch.randn(n, setting.dim, generator=g, dtype=torch.float64)
    model = model_with(setting, n, truth)
    y = response(model, X, g, truth is None)
    with torch.no_grad():
        return X, y, float(model.pretrained(X, y).sum())


def _init_worker():
    torch.set_num_threads(1)
    register_resolvers()
    warnings.simplefilter("ignore")


def calibration_task(name: str, n: int, indices: list, B: int, naive: int) -> list:
    """The test on H0 data sets ``indices``: p-value, statistic, failures; and, for indices below
    ``naive``, the MLE's LR for the naive chi-square test."""
    setting = setting_of(name)
    test_estimator = test_procedure(setting)
    mle = with_variance_floor(Estimator(setting.model(), "newton", n_init=3), 0.1)
    rows = []
    for i in indices:
        X, y, null = draw(setting, n, None, i, "H0")
        t0 = time.perf_counter()
        result = contamination_test(test_estimator, X, y, B=B, seed=i, progress=False)
        row = {
            "index": i,
            "pvalue": result.pvalue,
            "statistic": result.statistic,
            "n_failed": result.n_failed,
            "seconds": time.perf_counter() - t0,
        }
        if i < naive:
            fit = mle.fit(X, y)
            row.update(
                mle_lr=2 * (float(fit.loglik[0]) - null),
                mle_status=fit.status[0],
                mle_degenerate=bool(fit.degenerate[0]),
            )
        rows.append(row)
    return rows


def statistic_task(name: str, n: int, truth: dict | None, tag: str, indices: list) -> list:
    """The test's statistic on data sets ``indices`` of one cell, by the package's own function (the
    alternative capped at the test's iterations, as ``contamination_test`` computes it)."""
    setting = setting_of(name)
    data = [draw(setting, n, truth, i, tag) for i in indices]
    X, Y = torch.stack([d[0] for d in data]), torch.stack([d[1] for d in data])
    return contamination_statistics(test_procedure(setting), X, Y).tolist()


def chunks(indices: list, size: int) -> list:
    return [indices[a : a + size] for a in range(0, len(indices), size)]


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def save(path: Path, data: dict):
    HERE.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def calibrate(args, pool):
    """Each cell's data sets 0..M-1, saved chunk by chunk: a rerun tests only the data sets not yet in
    calibration.json (so a cell stopped early keeps, and reports, the M it reached)."""
    path = HERE / "calibration.json"
    done = load(path)
    for name in SETTINGS:
        for n in (1000, 10_000):
            key = f"{name}/{n}"
            cell = done.setdefault(key, {"setting": name, "n": n, "B": args.B, "rows": [], "seconds": 0.0})
            todo = sorted(set(range(args.M)) - {r["index"] for r in cell["rows"]})
            if not todo:
                continue
            t0 = time.perf_counter()
            jobs = [pool.submit(calibration_task, name, n, part, args.B, args.naive) for part in chunks(todo, 10)]
            for job in as_completed(jobs):
                cell["rows"] = sorted(cell["rows"] + job.result(), key=lambda r: r["index"])
                cell["seconds"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                cell["load_average"] = os.getloadavg()[0]
                save(path, done)
            rows = cell["rows"]
            print(
                f"{key}: size at 0.05 {np.mean([r['pvalue'] <= 0.05 for r in rows]):.3f} over {len(rows)}, "
                f"{cell['seconds']:.0f} s",
                flush=True,
            )


def tau_for_mass(m: float, n: int, beta_norm: float = 1.0) -> float:
    """tau* with n E[sigmoid(beta*^T x + tau)] = m for x ~ N(0, I), ||beta*|| = beta_norm."""
    z, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()
    mass = lambda t: n * float((w / (1 + np.exp(-(beta_norm * z + t)))).sum())  # noqa: E731
    lo, hi = -40.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mass(mid) < m else (lo, mid)
    return (lo + hi) / 2


def alternatives(name: str, n: int) -> dict:
    """label -> truth overrides of the power cells at n."""
    out = {f"m={m:g}": {"gate.tau": tau_for_mass(m, n)} for m in MASSES}
    if name == "nondistinguishable_eta":
        centre = DELTA_1000 * (1000 / n) ** 0.5
        out |= {f"delta={centre * s:.5g}": {"prompts.0.expert.eta": [1 + centre * s] + [0.0] * 7} for s in DELTA_STEPS}
    return out


def power(args, pool):
    path = HERE / "power.json"
    done = load(path)
    for n in (1000, 10_000, 100_000):
        for name in SETTINGS:
            key = f"{name}/{n}"
            if key in done:
                continue
            t0 = time.perf_counter()
            step = max(1, 100_000 // n)
            cells = {"H0": (None, args.null)} | {k: (v, args.reps) for k, v in alternatives(name, n).items()}
            jobs = {
                k: [pool.submit(statistic_task, name, n, truth, k, part) for part in chunks(list(range(count)), step)]
                for k, (truth, count) in cells.items()
            }
            done[key] = {
                "setting": name,
                "n": n,
                "cells": {
                    k: {"truth": cells[k][0], "lr": [x for j in js for x in j.result()]} for k, js in jobs.items()
                },
                "seconds": time.perf_counter() - t0,
                "load_average": os.getloadavg()[0],
            }
            save(path, done)
            print(f"{key}: {time.perf_counter() - t0:.0f} s", flush=True)


def crossing(deltas: np.ndarray, rates: np.ndarray, level: float = 0.8) -> float:
    """The delta where power first reaches ``level``, linear in log delta between grid points (nan if never)."""
    for k in range(1, len(deltas)):
        if rates[k] >= level > rates[k - 1]:
            t = (level - rates[k - 1]) / (rates[k] - rates[k - 1])
            return float(np.exp(np.log(deltas[k - 1]) + t * (np.log(deltas[k]) - np.log(deltas[k - 1]))))
    return float(deltas[0]) if rates[0] >= level else float("nan")


def analyze(args):
    cal, pw = load(HERE / "calibration.json"), load(HERE / "power.json")
    lines = [
        "# Calibration of the contamination test",
        "",
        "Empirical size over M data sets drawn under H0 (each tested with its own B bootstrap refits), with Wilson "
        "95% intervals; beside it, on the first data sets of the same cells, the naive test: the MLE's LR "
        f"against chi-square({FREE_PARAMETERS}).",
        "",
        "| f0 (setting) | n | M | B | size at 0.05 [95% CI] | size at 0.01 [95% CI] | refits counted high | s a test | naive chi2: data sets | naive size at 0.05 [95% CI] | naive at 0.01 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, cell in cal.items():
        rows = cell["rows"]
        M = len(rows)
        cells = []
        for alpha in (0.05, 0.01):
            hits = sum(r["pvalue"] <= alpha + 1e-12 for r in rows)
            lo, hi = wilson(hits, M)
            cells.append(f"{hits / M:.3f} [{lo:.3f}, {hi:.3f}]")
        naive = [r["mle_lr"] for r in rows if "mle_lr" in r]
        nv = [sum(stats.chi2.sf(max(v, 0), FREE_PARAMETERS) <= a for v in naive) for a in (0.05, 0.01)]
        lo, hi = wilson(nv[0], len(naive)) if naive else (math.nan, math.nan)
        failed = sum(r["n_failed"] for r in rows)
        lines.append(
            f"| {cell['setting']} | {cell['n']} | {M} | {cell['B']} | {cells[0]} | {cells[1]} | {failed} of {M * cell['B']} | "
            f"{np.mean([r['seconds'] for r in rows]):.2f} | {len(naive)} | {nv[0] / max(len(naive), 1):.3f} [{lo:.3f}, {hi:.3f}] | "
            f"{nv[1] / max(len(naive), 1):.3f} |"
        )
    (HERE / "calibration.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if pw:
        power_report(pw)


def rejection(cell: dict, critical: float) -> tuple:
    lr = np.array(cell["lr"])
    return float(np.mean(lr > critical)), len(lr)


def power_report(pw: dict, n_boot: int = 2000):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    lines = [
        "# Power of the contamination test at level 0.05",
        "",
        "Critical value: the 95% quantile of the H0 statistics at the same n (the bootstrap test, unconditional); "
        "rejection rates with Wilson 95% intervals.",
        "",
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    delta_rows, cross = [], {}
    for ax, name in zip(axes, SETTINGS):
        lines += [
            f"## {name}: against the expected number of contaminated observations m = n E[s(x)]",
            "",
            "| n | " + " | ".join(f"m = {m:g}" for m in MASSES) + " |",
            "|---|" + "---|" * len(MASSES),
        ]
        for key, cell in pw.items():
            if cell["setting"] != name:
                continue
            n, cells = cell["n"], cell["cells"]
            critical = float(np.quantile(cells["H0"]["lr"], 0.95))
            rates = [rejection(cells[f"m={m:g}"], critical) for m in MASSES]
            lines.append(
                f"| {n} | "
                + " | ".join(
                    f"{r:.2f} [{wilson(round(r * k), k)[0]:.2f}, {wilson(round(r * k), k)[1]:.2f}]" for r, k in rates
                )
                + " |"
            )
            ax.plot(MASSES, [r for r, _ in rates], "o-", label=f"n = {n}")
            deltas = sorted((float(k.split("=")[1]), c) for k, c in cells.items() if k.startswith("delta="))
            if deltas:
                d = np.array([v for v, _ in deltas])
                lrs = [np.array(c["lr"]) for _, c in deltas]
                rates_d = np.array([np.mean(v > critical) for v in lrs])
                null = np.array(cells["H0"]["lr"])
                boots = []
                for _ in range(n_boot):  # resample the null pool and every delta's data sets
                    crit_b = np.quantile(rng.choice(null, null.size), 0.95)
                    boots.append(crossing(d, np.array([np.mean(rng.choice(v, v.size) > crit_b) for v in lrs])))
                boots = np.array(boots)
                cross[n] = (crossing(d, rates_d), boots)
                delta_rows.append((n, d, rates_d, len(lrs[0])))
        ax.set_xscale("log")
        ax.set_xlabel("expected contaminated observations n E[s(x)]")
        ax.set_ylabel("rejection rate at 0.05")
        ax.axhline(0.05, color="k", lw=0.6, ls=":")
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=8)
        lines.append("")
    fig.savefig(HERE / "power.png", dpi=110)
    if delta_rows:
        lines += ["## nondistinguishable_eta: against eta* = eta0 (1 + delta), tau* = the setting's", ""]
        fig, ax = plt.subplots(figsize=(5.5, 3.8), constrained_layout=True)
        for n, d, rates_d, k in delta_rows:
            lines.append(
                f"- n = {n} ({k} data sets a delta): "
                + ", ".join(f"delta {a:.4g}: {r:.2f}" for a, r in zip(d, rates_d))
            )
            ax.plot(d, rates_d, "o-", label=f"n = {n}")
        ax.axhline(0.8, color="k", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("delta (eta* = eta0 (1 + delta))")
        ax.set_ylabel("rejection rate at 0.05")
        ax.legend(fontsize=8)
        fig.savefig(HERE / "delta.png", dpi=110)
        ns = np.array(sorted(cross))
        point = np.array([cross[n][0] for n in ns])
        lines += ["", "| n | delta at power 0.8 | 95% CI |", "|---|---|---|"]
        for n in ns:
            lo, hi = np.nanquantile(cross[n][1], [0.025, 0.975])
            lines.append(f"| {n} | {cross[n][0]:.4g} | [{lo:.4g}, {hi:.4g}] |")
        if np.isfinite(point).all() and len(ns) >= 2:
            slope = np.polyfit(np.log(ns), np.log(point), 1)[0]
            draws = np.stack([cross[n][1] for n in ns])  # (sizes, n_boot), resampled independently per n
            ok = np.isfinite(draws).all(0)
            slopes = np.polyfit(np.log(ns), np.log(draws[:, ok]), 1)[0]
            lo, hi = np.quantile(slopes, [0.025, 0.975])
            lines += [
                "",
                f"Slope of log delta_0.8 on log n: {slope:.3f} [{lo:.3f}, {hi:.3f}] (bootstrap, {ok.sum()} draws). "
                "A test of 'no contamination' against a prompt that differs from f0 by delta at a fixed gate "
                "weight is a first-order problem (the density moves by w delta d f0 / d eta): delta ~ n^-1/2. "
                "The paper's estimation rates for eta, n^-1/2 D^-1 with D = delta, make eta estimable only for "
                "delta >> n^-1/4.",
            ]
    (HERE / "power.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("calibrate", "power", "analyze"))
    parser.add_argument("--M", type=int, default=1000, help="H0 data sets per calibration cell")
    parser.add_argument("--B", type=int, default=99, help="bootstrap refits per calibration test")
    parser.add_argument("--naive", type=int, default=200, help="calibration data sets also fitted by the MLE")
    parser.add_argument("--reps", type=int, default=200, help="data sets per power alternative")
    parser.add_argument("--null", type=int, default=300, help="H0 data sets per power cell (the critical value)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.what == "analyze":
        return analyze(args)
    with ProcessPoolExecutor(args.workers, initializer=_init_worker) as pool:
        (calibrate if args.what == "calibrate" else power)(args, pool)


if __name__ == "__main__":
    main()
