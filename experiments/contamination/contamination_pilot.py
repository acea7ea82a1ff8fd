"""Pilots of the contamination test's choice of fit for the alternative (issue: is there a prompt at
all?), each on the same data sets for every choice: the null distribution of the statistic over M
data sets drawn under H0 (X fresh each), the share of degenerate and unconverged fits, seconds a
fit, and the power of the test with the null pool's 95% quantile as its critical value (the
unconditional Monte Carlo test with B = M) against a few alternatives.

- ``--compare floors`` (pilot.md): the alternative fitted to convergence (newton, 3 random starts)
  with the fit's own bounds (prompt variance >= 1e-8) and with the variance floor 0.1 x nu0, at
  n = 1000 in the distinguishable setting, against weak contamination tau* = -7, -6.
- ``--compare iterations`` (pilot_iterations.md): with the floor, the MLE (3 random starts, to
  convergence) against fits capped at K = 10, 20, 50 iterations from 2 or 3 random starts (the
  EM-test form), in the distinguishable setting (Laplace f0) at n = 1e3 (tau* = -7, -6) and 1e4
  (tau* = -9, -8), and the non-distinguishable one (Gaussian f0) at n = 1e3 against tau* = -7, -5
  and against eta* = eta0 (1 + delta), delta = 0.05, 0.1, 0.2 at the setting's tau*.

- ``--compare starts`` (pilot_starts.md): the test's own statistic (``softmoe_torch.lrt.
  contamination_statistics``, 10 iterations, the variance floor) from the test's default starts (2
  random) against the anchored ones (``starts='anchored'``: at the null), beside the oracle
  likelihood-ratio test (the true alternative known: 2 (loglik of the truth - loglik of f0), its
  critical value from the same H0 data sets), in the non-distinguishable setting against a prompt
  eta* = eta0 (1 + delta), nu* = nu0, the setting's gate, on a grid of delta = c n^-1/2 at each n
  of ``--sizes``; delta at power 0.8 interpolated in log delta.

    python experiments/contamination/contamination_pilot.py [--compare floors|iterations|starts] [--M 60] [--reps 40]
        [--sizes 1000 10000]

Writes experiments/contamination/pilot[_<compare>].json and .md. A pilot: M and the replications
are small and its intervals wide; the calibration and power studies are not this."""

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

# experiments/ on sys.path for the helpers every study shares (experiments/studykit.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import studykit  # noqa: E402
from studykit import model_with, response  # noqa: E402

from softmoe_torch import Estimator  # noqa: E402
from softmoe_torch.bootstrap_test import procedure  # noqa: E402
from softmoe_torch.lrt import contamination_statistics, with_variance_floor  # noqa: E402
from softmoe_torch.metrics.intervals import wilson  # noqa: E402
from softmoe_torch.settings.setting import Setting  # noqa: E402

HERE = Path(__file__).resolve().parent
E1 = [1.0] + [0.0] * 7
CELLS = {  # comparison -> [(setting, n, {label: truth overrides})]
    "floors": [("distinguishable", 1000, {"tau*=-7": {"gate.tau": -7.0}, "tau*=-6": {"gate.tau": -6.0}})],
    "iterations": [
        ("distinguishable", 1000, {"tau*=-7": {"gate.tau": -7.0}, "tau*=-6": {"gate.tau": -6.0}}),
        ("distinguishable", 10000, {"tau*=-9": {"gate.tau": -9.0}, "tau*=-8": {"gate.tau": -8.0}}),
        (
            "nondistinguishable_eta",
            1000,
            {
                "tau*=-7": {"gate.tau": -7.0},
                "tau*=-5": {"gate.tau": -5.0},
                **{f"delta={d:g}": {"prompts.0.expert.eta": [1 + d, *E1[1:]]} for d in (0.05, 0.1, 0.2)},
            },
        ),
    ],
}


def draws(setting: Setting, n: int, truth: dict | None, M: int, seed: int):
    """M data sets of size n (X fresh each): under H0 (truth None) or the setting's truth at n with
    the given parameters replaced; and the null's log-likelihood of each."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(M, n, setting.dim, generator=g, dtype=torch.float64)
    model = model_with(setting, n, truth)
    f0 = model.pretrained
    Y = torch.stack([response(model, X[m], g, truth is None) for m in range(M)])
    with torch.no_grad():
        return X, Y, torch.stack([f0(X[m], Y[m]).sum() for m in range(M)])


def statistics(estimator: Estimator, X, Y, null_loglik, capped: bool) -> dict:
    """The statistic of every data set: raw for a capped fit, clamped at 0 for the MLE."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = estimator.fit(X, Y, replications=[0] * len(Y))
    lr = 2 * (res.loglik - null_loglik)
    return {
        "lr": (lr if capped else lr.clamp_min(0)).tolist(),
        "status": res.status,
        "degenerate": [bool(d) for d in res.degenerate],
        "seconds": time.perf_counter() - t0,
    }


def choices(compare: str, model) -> dict:
    """name -> (estimator, capped) of the comparison."""
    if compare == "floors":
        return {
            "bounds only (nu >= 1e-8)": (Estimator(model, "newton", n_init=3), False),
            "floor 0.1 x nu0": (with_variance_floor(Estimator(model, "newton", n_init=3), 0.1), False),
        }
    out = {
        "MLE (3 random starts, to convergence)": (with_variance_floor(Estimator(model, "newton", n_init=3), 0.1), False)
    }
    for k in (10, 20, 50):
        for starts in (2, 3):
            out[f"{starts} random starts, {k} iterations"] = (
                with_variance_floor(Estimator(model, "newton", n_init=starts, max_iter=k), 0.1),
                True,
            )
    return out


def run_cell(setting: Setting, n: int, alternatives: dict, compare: str, M: int, reps: int) -> dict:
    data = {"H0": draws(setting, n, None, M, 1)} | {
        k: draws(setting, n, v, reps, 2 + i) for i, (k, v) in enumerate(alternatives.items())
    }
    out = {}
    for name, (estimator, capped) in choices(compare, setting.model()).items():
        cells = {k: statistics(estimator, *v, capped) for k, v in data.items()}
        critical = float(np.quantile(cells["H0"]["lr"], 0.95))
        for k, c in cells.items():
            c["unconverged"] = sum(s not in ("converged", "max_iter" if capped else "converged") for s in c["status"])
            c["n_degenerate"] = sum(c["degenerate"])
            if k != "H0":
                hits = sum(v > critical for v in c["lr"])
                c["power"] = {"rate": hits / len(c["lr"]), "ci95": wilson(hits, len(c["lr"]))}
        out[name] = {"critical_95": critical, "null_median": float(np.median(cells["H0"]["lr"])), "cells": cells}
        print(
            setting.name,
            n,
            name,
            {k: (c.get("power", {}).get("rate"), round(c["seconds"] / len(c["lr"]), 3)) for k, c in cells.items()},
            flush=True,
        )
    return out


def table(result: dict, M: int) -> list:
    """Markdown rows of one cell: per choice the null's median and 95% quantile, degenerate and
    unconverged H0 fits, seconds a fit (H0), the power at each alternative."""
    labels = [k for k in next(iter(result.values()))["cells"] if k != "H0"]
    lines = [
        "| alternative's fit | H0: median, 95% quantile | H0 degenerate / unconverged | s a fit (H0) | "
        + " | ".join(f"power at {k} [95% CI]" for k in labels)
        + " |",
        "|---|---|---|---|" + "---|" * len(labels),
    ]
    for name, ch in result.items():
        c = ch["cells"]
        lines.append(
            f"| {name} | {ch['null_median']:.1f}, {ch['critical_95']:.1f} | {c['H0']['n_degenerate']} / {c['H0']['unconverged']} of {M} | "
            f"{c['H0']['seconds'] / M:.3f} | "
            + " | ".join(
                f"{c[k]['power']['rate']:.2f} [{c[k]['power']['ci95'][0]:.2f}, {c[k]['power']['ci95'][1]:.2f}]"
                for k in labels
            )
            + " |"
        )
    return lines


DELTA_GRID = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)  # delta = c n^-1/2, c on this grid (a factor of 32)
STARTS = {"test's default (2 random starts)": "policy", "anchored at the null (3 starts)": "anchored"}


def delta_at(deltas, rates, level: float = 0.8):
    """delta where the power first reaches ``level``, interpolated linearly in log delta; None if never."""
    for i, r in enumerate(rates):
        if r >= level:
            if i == 0:
                return float(deltas[0])
            lo, hi = np.log(deltas[i - 1]), np.log(deltas[i])
            return float(np.exp(lo + (level - rates[i - 1]) / (r - rates[i - 1]) * (hi - lo)))
    return None


def starts_cell(n: int, M: int, reps: int) -> dict:
    """One n of the starts pilot: the statistics of each choice and the oracle's on shared data sets."""
    setting = studykit.setting_of("nondistinguishable_eta")
    cfg = studykit.compose([f"setting={setting.name}", "data=none"], "test_data")
    estimator = procedure(cfg, setting.model())  # the test command's procedure, as calibration uses it
    eta0 = np.array(E1)
    deltas = [c / np.sqrt(n) for c in DELTA_GRID]
    truths = {f"{d:.4g}": {"prompts.0.expert.eta": (eta0 * (1 + d)).tolist()} for d in deltas}
    null = draws(setting, n, None, M, 1)
    out = {"n": n, "deltas": deltas, "choices": {}, "oracle": {}}
    data = {k: draws(setting, n, v, reps, 2 + i) for i, (k, v) in enumerate(truths.items())}
    for name, starts in STARTS.items():
        t0 = time.perf_counter()
        stats = {k: contamination_statistics(estimator, X, Y, starts=starts).tolist() for k, (X, Y, _) in data.items()}
        stats["H0"] = contamination_statistics(estimator, null[0], null[1], starts=starts).tolist()
        seconds = (time.perf_counter() - t0) / (M + reps * len(deltas))
        critical = float(np.quantile(stats["H0"], 0.95))
        power = [float(np.mean(np.array(stats[k]) > critical)) for k in truths]
        out["choices"][name] = {
            "H0": stats["H0"],
            "critical_95": critical,
            "power": power,
            "seconds": seconds,
            "statistics": stats,
            "delta_80": delta_at(deltas, power),
        }
    for key, truth in truths.items():  # the oracle: a simple alternative, its own null quantile
        alt = model_with(setting, n, truth)
        with torch.no_grad():
            lr = lambda X, Y: [2 * float(alt(x, y).sum() - alt.pretrained(x, y).sum()) for x, y in zip(X, Y)]  # noqa: E731
            h0, h1 = lr(null[0], null[1]), lr(data[key][0], data[key][1])
        out["oracle"][key] = float(np.mean(np.array(h1) > np.quantile(h0, 0.95)))
    out["oracle_delta_80"] = delta_at(deltas, list(out["oracle"].values()))
    return out


def starts_report(cells: list, M: int, reps: int) -> list:
    lines = [
        f"# Contamination test pilot: the alternative's starts; {M} H0 data sets, {reps} per alternative",
        "",
        "Non-distinguishable setting (Gaussian f0 = N(tanh(x_1), 0.001)), the prompt N(tanh((1 + delta) x_1), 0.001)",
        "under the setting's gate; every statistic is `contamination_statistics` (10 iterations, variance floor",
        "0.1 nu0, newton); critical values are each statistic's 95% quantile over the same H0 data sets; the",
        "oracle is the likelihood-ratio test of H0 against the true alternative. A pilot: its intervals are wide",
        "(Wilson 95% in brackets), and the calibration and power studies are not this.",
        "",
    ]
    for cell in cells:
        n, deltas = cell["n"], cell["deltas"]
        lines += [
            f"## n = {n}",
            "",
            "| statistic | H0 median, 95% quantile | s a data set | "
            + " | ".join(f"delta = {d:.3g}" for d in deltas)
            + " | delta at power 0.8 |",
            "|---|---|---|" + "---|" * (len(deltas) + 1),
        ]
        for name, c in cell["choices"].items():
            ci = [wilson(round(p * reps), reps) for p in c["power"]]
            d80 = "not reached" if c["delta_80"] is None else f"{c['delta_80']:.3g}"
            lines.append(
                f"| {name} | {np.median(c['H0']):.1f}, {c['critical_95']:.1f} | {c['seconds']:.3f} | "
                + " | ".join(f"{p:.2f} [{a:.2f}, {b:.2f}]" for p, (a, b) in zip(c["power"], ci))
                + f" | {d80} |"
            )
        o80 = "not reached" if cell["oracle_delta_80"] is None else f"{cell['oracle_delta_80']:.3g}"
        lines += [
            "| oracle LR test | | | " + " | ".join(f"{p:.2f}" for p in cell["oracle"].values()) + f" | {o80} |",
            "",
        ]
    return lines


def run_starts(args):
    cells = []
    for n in args.sizes:
        cells.append(starts_cell(n, args.M, args.reps))
        c = cells[-1]
        print(
            n,
            {k: (v["power"], v["delta_80"]) for k, v in c["choices"].items()},
            "oracle",
            c["oracle_delta_80"],
            flush=True,
        )
    out = {"compare": "starts", "M": args.M, "reps": args.reps, "cells": cells}
    lines = starts_report(cells, args.M, args.reps)
    (HERE / "pilot_starts.json").write_text(json.dumps(out, indent=1))
    (HERE / "pilot_starts.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", choices=sorted([*CELLS, "starts"]), default="iterations")
    parser.add_argument("--M", type=int, default=60, help="H0 data sets per cell")
    parser.add_argument("--reps", type=int, default=40, help="data sets per alternative")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="n of the starts pilot")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.compare == "starts":
        return run_starts(args)
    out = {"compare": args.compare, "M": args.M, "reps": args.reps, "procedure": "newton", "cells": []}
    lines = [
        f"# Contamination test pilot: the alternative's fit ({args.compare}); {args.M} H0 data sets, {args.reps} per alternative",
        "",
        "The critical value is the H0 pool's 95% quantile; the statistic is clamped at 0 for the MLE and raw for a "
        "capped fit; seconds on one thread.",
        "",
    ]
    for name, n, alternatives in CELLS[args.compare]:
        setting = studykit.setting_of(name)
        result = run_cell(setting, n, alternatives, args.compare, args.M, args.reps)
        out["cells"].append({"setting": name, "n": n, "alternatives": alternatives, "choices": result})
        lines += [f"## {name}, n = {n}", "", *table(result, args.M), ""]
    HERE.mkdir(exist_ok=True)
    stem = "pilot" if args.compare == "floors" else f"pilot_{args.compare}"
    (HERE / f"{stem}.json").write_text(json.dumps(out, indent=1))
    (HERE / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
