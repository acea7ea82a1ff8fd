"""Calibration and power of the contamination test as `python -m softmoe_torch.bootstrap_test` runs it
(newton, the alternative capped at 10 iterations from the anchored starts, variance floor 0.1 nu0,
the broad-prompt part with variance ratios 10, 100, 1000, both parts combined by min-p), for the
distinguishable setting's f0 (Laplace) and the non-distinguishable one's (Gaussian), X ~ N(0, I_8).

    python experiments/contamination/contamination_study.py calibrate [--M 4000 4000 500] [--replicate SETTING N]
    python experiments/contamination/contamination_study.py crosscheck [--M 500] [--B 99] [--n 1000]
    python experiments/contamination/contamination_study.py prompts --setting distinguishable [--M 500] [--B 19]
    python experiments/contamination/contamination_study.py power [--reps 200 200 100]
    python experiments/contamination/contamination_study.py analyze

- ``calibrate`` (the warp-speed design of Giacomini, Politis & White, 2013): per setting and n in
  1e3, 1e4, 1e5, M data sets drawn under H0, each with ONE bootstrap draw (the test's own draw,
  y* ~ f0 at the data set's X); the statistic of both (``softmoe_torch.lrt.contamination_statistics``,
  the test's code path). A data set's p-value is ``pooled_pvalues`` of its statistic against the
  pool of all M draws (the test's own p-value, with the pool for the B refits). The size at 0.05
  and 0.01 with Wilson intervals and Holm-adjusted exact binomial tests across the cells; the
  paired check P(T more extreme than its own T*) = 1/2 (ties split). Today's earlier statistic (2
  random starts, no broad part) is computed on the first ``--baseline`` draws of each cell: its
  null pool for the power tables' baseline column.
- ``crosscheck``: M data sets under H0 of one cell (fixed in advance), each tested by
  ``contamination_test`` itself with B refits: the full bootstrap's size beside the warp-speed one.
- ``prompts``: one cell of ``prompts_test`` (1 prompt against 2), from the policy's starts and from the
  split ones: M data sets from the setting's truth, each tested with B draws from its fitted null
  (the null is estimated: the level is approximate).
- ``power``: the rejection rate at 0.05, critical values from the same n's calibration pool:
  in the non-distinguishable setting against a prompt N(tanh((1 + delta) x_1), nu0) under the
  setting's gate (delta = c n^-1/2, 7 values of c over a factor of 16), and in both settings against
  m = n E[s(x)] expected contaminated observations (the setting's prompt at n, tau* solved for m);
  beside each, the earlier statistic and the oracle likelihood-ratio test (the true alternative
  known; its critical value from H0 data sets of the same n).
- ``analyze``: calibration.md, power.md, delta.png, mass.png from the JSONs.

Everything is saved chunk by chunk (calibration.json, crosscheck.json, power.json here) and a rerun
does only what is missing. Work is spread over ``--workers`` processes of one torch thread each."""

import argparse
import json
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

from softmoe_torch.bootstrap_test import procedure  # noqa: E402
from softmoe_torch.lrt import (  # noqa: E402
    contamination_statistics,
    contamination_test,
    null_draw,  # noqa: E402
    pooled_pvalues,
    prompts_test,
)
from softmoe_torch.metrics.intervals import wilson  # noqa: E402
from softmoe_torch.settings.configs import register_resolvers  # noqa: E402
from softmoe_torch.settings.setting import Setting  # noqa: E402
from softmoe_torch.study.simulate import data_seed  # noqa: E402

HERE = Path(__file__).resolve().parent
SETTINGS = ("distinguishable", "nondistinguishable_eta")
SIZES = (1000, 10_000, 100_000)
ALPHAS = (0.05, 0.01)
MASSES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # expected contaminated observations n E[s(x)]
MASS_SIZES = (1000, 10_000)
DELTA_C = tuple(0.16 * 16 ** (k / 6) for k in range(7))  # delta = c n^-1/2: 0.16 .. 2.56, a factor of 16
BASELINE = {"starts": "policy", "broad": None}  # the earlier statistic: 2 random starts, no broad part


def test_procedure(setting: Setting):
    """The test command's estimator for this setting (conf/test_data.yaml's defaults)."""
    cfg = studykit.compose([f"setting={setting.name}", "data=none"], "test_data")
    return procedure(cfg, setting.model())


def draw(setting: Setting, n: int, truth: dict | None, index: int, tag: str):
    """Data set ``index`` of a cell: X ~ N(0, I); y under H0 (truth None) or the setting's truth at
    n with the given parameters replaced."""
    g = torch.Generator().manual_seed(data_seed(17, f"{setting.name}/{tag}", n, index))
    X = torch.randn(n, setting.dim, generator=g, dtype=torch.float64)
    return X, response(model_with(setting, n, truth), X, g, truth is None)


def _init_worker():
    torch.set_num_threads(1)
    register_resolvers()
    warnings.simplefilter("ignore")


def calibration_task(name: str, n: int, baseline: int, indices: list) -> list:
    """H0 data sets ``indices`` and each one's bootstrap draw (the test's own draw, seed = index):
    the test's statistic (both parts) of each; the earlier statistic of the draws below ``baseline``."""
    setting = setting_of(name)
    estimator = test_procedure(setting)
    f0 = estimator.spec.pretrained
    t0 = time.perf_counter()
    data = [draw(setting, n, None, i, "H0") for i in indices]
    X = torch.stack([x for x, _ in data])
    Y = torch.stack([y for _, y in data])
    Ystar = torch.stack([null_draw(f0, x, i, 0) for i, x in zip(indices, X)])
    both = contamination_statistics(estimator, torch.cat([X, X]), torch.cat([Y, Ystar])).tolist()
    old = [i < baseline for i in indices]
    base = contamination_statistics(estimator, X[old], Ystar[old], **BASELINE)[:, 0].tolist() if any(old) else []
    base_iter = iter(base)
    seconds = (time.perf_counter() - t0) / len(indices)
    R = len(indices)
    return [
        {
            "index": i,
            "obs": both[r],
            "boot": both[R + r],
            "baseline": next(base_iter) if old[r] else None,
            "seconds": seconds,
        }
        for r, i in enumerate(indices)
    ]


def crosscheck_task(name: str, n: int, B: int, indices: list) -> list:
    """H0 data sets ``indices``, each tested by contamination_test itself with B refits."""
    setting = setting_of(name)
    estimator = test_procedure(setting)
    rows = []
    for i in indices:
        X, y = draw(setting, n, None, i, "H0")
        t0 = time.perf_counter()
        result = contamination_test(estimator, X, y, B=B, seed=i, progress=False)
        rows.append(
            {
                "index": i,
                "pvalue": result.pvalue,
                "parts": result.part_pvalues,
                "n_failed": result.n_failed,
                "seconds": time.perf_counter() - t0,
                "obs": [result.statistic, result.raw_broad],
                "boot": np.column_stack([result.boot, result.boot_broad]).tolist(),
                "counted_high": np.flatnonzero(result.counted_high).tolist(),
            }
        )
    return rows


def prompts_task(name: str, n: int, B: int, starts: str, indices: list) -> list:
    """Data sets ``indices`` drawn from the setting's truth at n (one prompt), each tested by
    ``prompts_test`` itself (1 prompt against 2, the test command's procedure, ``starts``) with B refits."""
    setting = setting_of(name)
    cfg = studykit.compose([f"setting={name}", "data=none", "test=prompts"], "test_data")
    null = procedure(cfg, setting.model())
    cfg.setting.n_prompts = setting.n_prompts + 1
    alternative = procedure(cfg, Setting(cfg.setting).model())
    rows = []
    for i in indices:
        X, y = draw(setting, n, {}, i, "one prompt")
        t0 = time.perf_counter()
        result = prompts_test(null, alternative, X, y, B=B, seed=i, progress=False, starts=starts)
        rows.append(
            {"index": i, "pvalue": result.pvalue, "n_failed": result.n_failed, "seconds": time.perf_counter() - t0}
        )
    return rows


def power_task(name: str, n: int, label: str, truth: dict | None, oracles: dict, indices: list) -> list:
    """Data sets ``indices`` of one power cell (truth None: H0, for the oracle's null): the test's
    statistic and the earlier one (not under H0: the calibration pools serve), and the oracle LR
    against each alternative of ``oracles`` ({label: truth}) on H0 data, against its own truth otherwise."""
    setting = setting_of(name)
    data = [draw(setting, n, truth, i, label) for i in indices]
    X, Y = torch.stack([x for x, _ in data]), torch.stack([y for _, y in data])
    t0 = time.perf_counter()
    rows = [{"index": i} for i in indices]
    if truth is not None:
        estimator = test_procedure(setting)
        both = contamination_statistics(estimator, X, Y).tolist()
        base = contamination_statistics(estimator, X, Y, **BASELINE)[:, 0].tolist()
        for r, row in enumerate(rows):
            row.update(obs=both[r], baseline=base[r])
    with torch.no_grad():
        for key, alt_truth in (oracles if truth is None else {label: truth}).items():
            alt = model_with(setting, n, alt_truth)
            for r, row in enumerate(rows):
                row.setdefault("oracle", {})[key] = 2 * float(alt(X[r], Y[r]).sum() - alt.pretrained(X[r], Y[r]).sum())
    for row in rows:
        row["seconds"] = (time.perf_counter() - t0) / len(indices)
    return rows


def chunks(indices: list, size: int) -> list:
    return [indices[a : a + size] for a in range(0, len(indices), size)]


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def save(path: Path, data: dict):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def run_cells(pool, path: Path, cells: dict, task, step):
    """Fill ``cells`` ({key: (meta, count, args)}) into the JSON at ``path``: data sets 0..count-1 of
    each key, ``task(*args, indices)`` on chunks of ``step(n)`` indices, saved as they come; what is
    there already is kept."""
    done = load(path)
    jobs = {}
    for key, (meta, count, args) in cells.items():
        if not count:
            continue
        cell = done.setdefault(key, {**meta, "rows": [], "seconds": 0.0})
        first = meta.get("first", 0)
        todo = sorted(set(range(first, first + count)) - {r["index"] for r in cell["rows"]})
        size = step(meta["n"])
        for part in chunks(todo, size):
            jobs[pool.submit(task, *args, part)] = key
    t0 = time.perf_counter()
    for job in as_completed(jobs):
        key = jobs[job]
        cell = done[key]
        cell["rows"] = sorted(cell["rows"] + job.result(), key=lambda r: r["index"])
        cell["seconds"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        cell["load_average"] = os.getloadavg()[0]
        save(path, done)
        print(f"{key}: {len(cell['rows'])} data sets, {cell['seconds']:.0f} s", flush=True)


def calibrate(args, pool):
    cells = {}
    for n, M in zip(SIZES, args.M):
        for name in SETTINGS:
            meta = {"setting": name, "n": n, "M": M}
            cells[f"{name}/{n}"] = (meta, M, (name, n, args.baseline[SIZES.index(n)]))
    if args.replicate:  # a second, independent cell: the data sets after the first cell's M
        name, n = args.replicate[0], int(args.replicate[1])
        M = args.M[SIZES.index(n)]
        meta = {"setting": name, "n": n, "M": M, "first": M, "replicate": True}
        cells = {f"{name}/{n}/replicate": (meta, M, (name, n, 0))}
    run_cells(pool, HERE / "calibration.json", cells, calibration_task, lambda n: max(1, 20_000 // n))


def crosscheck(args, pool):
    meta = {"setting": args.setting, "n": args.n, "M": args.M, "B": args.B}
    cells = {f"{args.setting}/{args.n}": (meta, args.M, (args.setting, args.n, args.B))}
    run_cells(pool, HERE / "crosscheck.json", cells, crosscheck_task, lambda n: 5)


def prompts_cell(args, pool):
    cells = {
        f"{args.setting}/{args.n}/{starts}": (
            {"setting": args.setting, "n": args.n, "M": args.M, "B": args.B, "starts": starts},
            args.M,
            (args.setting, args.n, args.B, starts),
        )
        for starts in ("policy", "anchored")
    }
    run_cells(pool, HERE / "prompts.json", cells, prompts_task, lambda n: 5)


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
    """label -> truth overrides of the power cells at n: delta (non-distinguishable) and m (both)."""
    out = {}
    if name == "nondistinguishable_eta":
        for c in DELTA_C:
            delta = c / np.sqrt(n)
            out[f"delta={delta:.5g}"] = {"prompts.0.expert.eta": [1 + delta] + [0.0] * 7, "prompts.0.nu": 0.001}
    if n in MASS_SIZES:
        out |= {f"m={m:g}": {"gate.tau": tau_for_mass(m, n)} for m in MASSES}
    return out


def power(args, pool):
    cells = {}
    for n, reps in zip(SIZES, args.reps):
        for name in SETTINGS:
            alts = alternatives(name, n)
            if not alts:
                continue
            cells[f"{name}/{n}/H0"] = ({"setting": name, "n": n, "label": "H0"}, args.null, (name, n, "H0", None, alts))
            for label, truth in alts.items():
                meta = {"setting": name, "n": n, "label": label, "truth": truth}
                cells[f"{name}/{n}/{label}"] = (meta, reps, (name, n, label, truth, {}))
    run_cells(pool, HERE / "power.json", cells, power_task, lambda n: max(1, 20_000 // n))


# ----------------------------------------------------------------------------- analysis


def pool_of(cal: dict, name: str, n: int):
    """The calibration cell's draws: the test's statistic (M, 2) and the earlier statistic's (<= M,)."""
    rows = cal[f"{name}/{n}"]["rows"]
    return np.array([r["boot"] for r in rows]), np.array([r["baseline"] for r in rows if r["baseline"] is not None])


def holm(pvalues: list) -> list:
    """Holm's step-down adjustment of a list of p-values."""
    order = np.argsort(pvalues)
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def warp_size(p: np.ndarray, p_star: np.ndarray, alpha: float) -> tuple:
    """The warp-speed size at ``alpha`` and its standard error. The critical value comes from the pool
    of M draws, so its sampling error moves every decision alike: to first order size - alpha =
    mean(reject_i - alpha) - mean(reject*_i - alpha), reject*_i the draw's own decision against the
    others, and the standard error is that of the paired difference reject_i - reject*_i (about
    sqrt(2) times the binomial one; less where a data set and its own draw agree)."""
    reject, reject_star = p <= alpha + 1e-12, p_star <= alpha + 1e-12
    diff = reject.astype(float) - reject_star.astype(float)
    return float(reject.mean()), float(diff.std(ddof=1) / np.sqrt(len(p)))


def calibration_rows(cal: dict) -> list:
    """Per cell: M, the warp-speed sizes with Wilson intervals and binomial p-values, the paired check."""
    out = []
    for key, cell in cal.items():
        rows = cell["rows"]
        if len(rows) < 2:
            continue
        obs, boot = np.array([r["obs"] for r in rows]), np.array([r["boot"] for r in rows])
        p = pooled_pvalues(obs, boot)
        p_star = np.array([pooled_pvalues(boot[i : i + 1], np.delete(boot, i, axis=0))[0] for i in range(len(boot))])
        score = (p < p_star) + 0.5 * (p == p_star)  # T more extreme than its own T*: 1, a tie: 1/2
        half = 1.96 * score.std(ddof=1) / np.sqrt(len(score))
        sizes = []
        for alpha in ALPHAS:
            size, se = warp_size(p, p_star, alpha)
            sizes.append((size, (size - 1.96 * se, size + 1.96 * se), 2 * stats.norm.sf(abs(size - alpha) / se)))
        out.append(
            {
                "key": key,
                "setting": cell["setting"] + (" (independent replicate)" if cell.get("replicate") else ""),
                "n": cell["n"],
                "M": len(rows),
                "sizes": sizes,
                "paired": (score.mean(), score.mean() - half, score.mean() + half),
                "seconds": float(np.mean([r["seconds"] for r in rows])),
                "null_fitted": np.quantile(obs[:, 0], [0.5, 0.95]),
                "broad_zero": float(np.mean(obs[:, 1] == 0)),
            }
        )
    flat = holm([s[2] for row in out for s in row["sizes"]])
    for k, row in enumerate(out):
        row["holm"] = flat[2 * k : 2 * k + 2]
    return out


def calibration_report(cal: dict, cross: dict, prompts: dict, old: dict) -> list:
    lines = [
        "# Calibration of the contamination test (warp speed)",
        "",
        "M data sets drawn under H0 (X ~ N(0, I_8)), each with one bootstrap draw (the test's own); a data set's "
        "p-value is the test's (min-p of both parts, `pooled_pvalues`) against the pool of all M draws "
        "(Giacomini, Politis & White, 2013). Sizes with 95% intervals that include the pool's own sampling error "
        "(the critical value is estimated from M draws: the standard error of the paired difference between a data "
        "set's decision and its own draw's, about sqrt(2) times the binomial one); the z-test of size = alpha in "
        "each cell, Holm-adjusted over the (cell, alpha) pairs; the paired check P(T more extreme than its own "
        "T*) with ties split (1/2 under H0; normal 95% interval).",
        "",
        "| f0 (setting) | n | M | size at 0.05 [95% CI] | Holm p | size at 0.01 [95% CI] | Holm p | paired check [95% CI] "
        "| fitted part under H0: median, 95% quantile | broad part 0 | s a statistic |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in calibration_rows(cal):
        (s5, ci5, _), (s1, ci1, _) = row["sizes"]
        M = row["M"]
        lines.append(
            f"| {row['setting']} | {row['n']} | {M} | {s5:.3f} [{ci5[0]:.3f}, {ci5[1]:.3f}] | {row['holm'][0]:.2f} "
            f"| {s1:.4f} [{ci1[0]:.4f}, {ci1[1]:.4f}] | {row['holm'][1]:.2f} "
            f"| {row['paired'][0]:.3f} [{row['paired'][1]:.3f}, {row['paired'][2]:.3f}] "
            f"| {row['null_fitted'][0]:.1f}, {row['null_fitted'][1]:.1f} | {row['broad_zero']:.2f} | {row['seconds']:.3f} |"
        )
    if cross:
        lines += ["", "## Full-bootstrap cross-check", ""]
        for key, cell in cross.items():
            p = np.array([r["pvalue"] for r in cell["rows"]])
            M = len(p)
            sizes = [(int((p <= a + 1e-12).sum()), a) for a in ALPHAS]
            lines.append(
                f"{cell['setting']}, n = {cell['n']}: M = {M} data sets (fixed in advance at {cell['M']}), each tested by "
                f"`contamination_test` with B = {cell['B']}: "
                + "; ".join(
                    f"size at {a:g} {h / M:.3f} [{wilson(h, M)[0]:.3f}, {wilson(h, M)[1]:.3f}]" for h, a in sizes
                )
                + f"; {np.mean([r['seconds'] for r in cell['rows']]):.1f} s a test; refits counted high: "
                f"{sum(r['n_failed'] for r in cell['rows'])}."
            )
    for key, cell in prompts.items():
        p = np.array([r["pvalue"] for r in cell["rows"]])
        M, h = len(p), int((p <= 0.05 + 1e-12).sum())
        lo, hi = wilson(h, M)
        lines += [
            "",
            f"## The prompts test (1 prompt against 2), the alternative's starts: {cell['starts']}",
            "",
            f"{cell['setting']}, n = {cell['n']}, data from the setting's truth (one prompt): M = {M} data sets "
            f"(fixed in advance at {cell['M']}), each tested by `prompts_test` (the command's procedure: the null "
            f"fitted to convergence from 2 random starts, the alternative capped at 10 iterations from "
            f"{'2 random starts' if cell['starts'] == 'policy' else 'the split starts at the fitted null'}) with B = {cell['B']} "
            f"draws from the fitted null: size at 0.05 {h / M:.3f} [{lo:.3f}, {hi:.3f}] "
            f"({np.mean([r['seconds'] for r in cell['rows']]):.1f} s a test; refits counted high: "
            f"{sum(r['n_failed'] for r in cell['rows'])}). The null is estimated, so the level is approximate.",
        ]
    if old:
        lines += [
            "",
            "## The naive chi-square test (from the earlier calibration, calibration_policy.json)",
            "",
            "The MLE's LR (3 random starts, to convergence, the variance floor) against chi-square(18), on the first "
            "200 H0 data sets of the earlier calibration's cells (the statistic tested there was the earlier one: "
            "2 random starts, no broad part).",
            "",
            "| f0 (setting) | n | data sets | naive size at 0.05 [95% CI] | at 0.01 | the earlier statistic's size at 0.05 "
            "(B = 99) [95% CI] over M |",
            "|---|---|---|---|---|---|",
        ]
        for cell in old.values():
            naive = [r["mle_lr"] for r in cell["rows"] if "mle_lr" in r]
            nv = [sum(stats.chi2.sf(max(v, 0), 18) <= a for v in naive) for a in ALPHAS]
            k = len(naive)
            pv = [r["pvalue"] <= 0.05 + 1e-12 for r in cell["rows"]]
            lo, hi = wilson(nv[0], k)
            plo, phi = wilson(sum(pv), len(pv))
            lines.append(
                f"| {cell['setting']} | {cell['n']} | {k} | {nv[0] / k:.3f} [{lo:.3f}, {hi:.3f}] | {nv[1] / k:.3f} | "
                f"{np.mean(pv):.3f} [{plo:.3f}, {phi:.3f}] over {len(pv)} |"
            )
    return lines


def crossing(deltas: np.ndarray, rates: np.ndarray, level: float = 0.8) -> float:
    """The delta where power first reaches ``level``, linear in log delta between grid points (nan if never)."""
    for k in range(1, len(deltas)):
        if rates[k] >= level > rates[k - 1]:
            t = (level - rates[k - 1]) / (rates[k] - rates[k - 1])
            return float(np.exp(np.log(deltas[k - 1]) + t * (np.log(deltas[k]) - np.log(deltas[k - 1]))))
    return float(deltas[0]) if rates[0] >= level else float("nan")


def rejections(cal: dict, pw: dict, name: str, n: int, label: str) -> dict:
    """0/1 rejections at 0.05 of each data set of a power cell: 'test', each of its parts alone
    ('fitted', 'broad': the same statistics, each part's own bootstrap p-value), 'baseline', 'oracle'."""
    pool, base_pool = pool_of(cal, name, n)
    rows = pw[f"{name}/{n}/{label}"]["rows"]
    obs = np.array([r["obs"] for r in rows])
    null = np.array([r["oracle"][label] for r in pw[f"{name}/{n}/H0"]["rows"]])
    return {
        "test": pooled_pvalues(obs, pool) <= 0.05 + 1e-12,
        "fitted": pooled_pvalues(obs[:, :1], pool[:, :1]) <= 0.05 + 1e-12,
        "broad": pooled_pvalues(obs[:, 1:], pool[:, 1:]) <= 0.05 + 1e-12,
        "baseline": np.array([r["baseline"] for r in rows]) > np.quantile(base_pool, 0.95),
        "oracle": np.array([r["oracle"][label] for r in rows]) > np.quantile(null, 0.95),
    }


def rate_cell(rejected: np.ndarray) -> str:
    """A table cell: the rejection rate of 0/1 decisions with its Wilson 95% interval."""
    hits = int(rejected.sum())
    lo, hi = wilson(hits, len(rejected))
    return f"{hits / len(rejected):.2f} [{lo:.2f}, {hi:.2f}]"


def power_report(cal: dict, pw: dict, n_boot: int = 2000) -> list:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    names = {
        "test": "the test (anchored + broad, min-p)",
        "fitted": "anchored part alone",
        "broad": "broad part alone",
        "baseline": "earlier statistic",
        "oracle": "oracle LR",
    }
    lines = [
        "# Power of the contamination test at level 0.05",
        "",
        "Critical values from the same n's calibration pool (calibration.json: the test's p-value against the pool "
        "of M null draws; the earlier statistic's 95% quantile over its null draws); the oracle LR test's from "
        "H0 data sets of the same n. Rejection rates with Wilson 95% intervals.",
        "",
        "## Against delta: the prompt N(tanh((1 + delta) x_1), nu0) under the setting's gate (non-distinguishable f0)",
        "",
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    d80 = {}
    name = "nondistinguishable_eta"
    for ax, n in zip(axes, SIZES):
        labels = [k.split("/")[2] for k in pw if k.startswith(f"{name}/{n}/delta=")]
        if not labels or f"{name}/{n}" not in cal:
            continue
        deltas = np.array([float(k.split("=")[1]) for k in labels])
        order = np.argsort(deltas)
        deltas, labels = deltas[order], [labels[i] for i in order]
        rej = [rejections(cal, pw, name, n, k) for k in labels]
        reps = len(rej[0]["test"])
        lines += [f"### n = {n} ({reps} data sets a delta)", "", "| delta | " + " | ".join(names.values()) + " |"]
        lines.append("|---|" + "---|" * len(names))
        for d, r in zip(deltas, rej):
            lines.append(f"| {d:.4g} | " + " | ".join(rate_cell(r[k]) for k in names) + " |")
        lines.append("")
        for k, style in zip(names, ("o-", "v-.", "x-.", "s--", "^:")):
            rates = np.array([r[k].mean() for r in rej])
            ax.plot(deltas, rates, style, label=names[k])
            boots = [
                crossing(deltas, np.array([rng.choice(r[k], r[k].size).mean() for r in rej])) for _ in range(n_boot)
            ]
            d80.setdefault(k, {})[n] = (crossing(deltas, rates), np.array(boots))
        ax.axhline(0.8, color="k", lw=0.6, ls=":")
        ax.axhline(0.05, color="k", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"n = {n}", fontsize=10)
        ax.set_xlabel("delta")
        ax.set_ylabel("rejection rate at 0.05")
        ax.legend(fontsize=7, loc="lower right")
    fig.savefig(HERE / "delta.png", dpi=110)
    plt.close(fig)
    lines += [
        "### delta at power 0.8 (interpolated in log delta; 95% bootstrap intervals over the data sets)",
        "",
        "| n | " + " | ".join(names.values()) + " | test / oracle |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for n in sorted(d80.get("test", {})):
        cells = []
        for k in names:
            point, boots = d80[k][n]
            lo, hi = np.nanquantile(boots, [0.025, 0.975]) if np.isfinite(boots).any() else (np.nan, np.nan)
            miss = int((~np.isfinite(boots)).sum())
            cells.append(
                f"{point:.4g} [{lo:.4g}, {hi:.4g}]" + (f" ({miss} of {len(boots)} draws not reached)" if miss else "")
            )
        ratio = d80["test"][n][0] / d80["oracle"][n][0]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    lines.append("")
    for k in names:
        ns = np.array(sorted(d80.get(k, {})))
        if len(ns) < 2:
            continue
        point = np.array([d80[k][n][0] for n in ns])
        draws = np.stack([d80[k][n][1] for n in ns])
        ok = np.isfinite(draws).all(0)
        if not np.isfinite(point).all() or not ok.any():
            lines.append(f"- {names[k]}: delta_0.8 not reached at every n; no slope.")
            continue
        slope = np.polyfit(np.log(ns), np.log(point), 1)[0]
        slopes = np.polyfit(np.log(ns), np.log(draws[:, ok]), 1)[0]
        lo, hi = np.quantile(slopes, [0.025, 0.975])
        lines.append(
            f"- {names[k]}: slope of log delta_0.8 on log n {slope:.3f} [{lo:.3f}, {hi:.3f}] "
            f"(bootstrap over data sets, {ok.sum()} of {len(ok)} draws reached 0.8 at every n)"
        )
    lines += [
        "",
        "## Against m = n E[s(x)] expected contaminated observations (the setting's prompt at n, tau* solved for m)",
        "",
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    marker = {"test": "o", "baseline": "s", "oracle": "^"}
    for ax, name in zip(axes, SETTINGS):
        lines += [f"### {name}", "", "| n | statistic | " + " | ".join(f"m = {m:g}" for m in MASSES) + " |"]
        lines.append("|---|---|" + "---|" * len(MASSES))
        for n, style in zip(MASS_SIZES, ("-", "--")):
            if f"{name}/{n}/m={MASSES[0]:g}" not in pw or f"{name}/{n}" not in cal:
                continue
            rej = [rejections(cal, pw, name, n, f"m={m:g}") for m in MASSES]
            for k in names:
                lines.append(f"| {n} | {names[k]} | " + " | ".join(rate_cell(r[k]) for r in rej) + " |")
                if k in ("test", "baseline", "oracle"):
                    ax.plot(MASSES, [r[k].mean() for r in rej], marker[k] + style, label=f"{names[k]}, n = {n}")
        lines.append("")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("expected contaminated observations m")
        ax.set_ylabel("rejection rate at 0.05")
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=6)
    fig.savefig(HERE / "mass.png", dpi=110)
    plt.close(fig)
    return lines


def analyze(args):
    cal, cross, pw = (
        {k: c for k, c in load(HERE / f"{name}.json").items() if c["rows"]}
        for name in ("calibration", "crosscheck", "power")
    )
    prompts = load(HERE / "prompts.json")
    lines = calibration_report(cal, cross, prompts, load(HERE / "calibration_policy.json"))
    (HERE / "calibration.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if pw:
        lines = power_report(cal, pw)
        (HERE / "power.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("calibrate", "crosscheck", "prompts", "power", "analyze"))
    parser.add_argument(
        "--M",
        type=int,
        nargs="+",
        default=None,
        help="calibration: H0 data sets per n (1e3 1e4 1e5); crosscheck: one number",
    )
    parser.add_argument(
        "--replicate",
        nargs=2,
        metavar=("SETTING", "N"),
        help="calibrate: an independent second cell (data sets M..2M-1)",
    )
    parser.add_argument(
        "--baseline",
        type=int,
        nargs=3,
        default=[1000, 1000, 300],
        help="draws per n that also get the earlier statistic",
    )
    parser.add_argument("--B", type=int, default=99, help="crosscheck, prompts: bootstrap refits per test")
    parser.add_argument("--n", type=int, default=1000, help="crosscheck, prompts: the cell's n")
    parser.add_argument("--setting", default="nondistinguishable_eta", help="crosscheck, prompts: the cell's setting")
    parser.add_argument("--reps", type=int, nargs=3, default=[200, 200, 100], help="power: data sets per point and n")
    parser.add_argument(
        "--null", type=int, default=1000, help="power: H0 data sets per n for the oracle's critical value"
    )
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.what == "analyze":
        return analyze(args)
    if args.M is None:
        args.M = [500] if args.what in ("crosscheck", "prompts") else [4000, 4000, 500]
    if args.what in ("crosscheck", "prompts"):
        args.M = args.M[0]
    with ProcessPoolExecutor(args.workers, initializer=_init_worker) as pool:
        {"calibrate": calibrate, "crosscheck": crosscheck, "prompts": prompts_cell, "power": power}[args.what](
            args, pool
        )


if __name__ == "__main__":
    main()
