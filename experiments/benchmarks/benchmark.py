"""Benchmark softmoe_torch's fitting methods against numpy/scipy peers (experiments/benchmarks/baseline_scipy.py).

    python experiments/benchmarks/benchmark.py [--sizes 1000 10000 100000] [--reps 40] [--settings ...]
        [--methods em em_newton em_torch direct newton] [--peers baseline scipy_bfgs numpy_newton]
        [--baseline-reps 3] [--em-torch-budget 300] [--threads T] [--quick] [--out experiments/benchmarks/benchmark.json]
    python experiments/benchmarks/benchmark.py --scale [--max-n 10000000] [--scale-sizes ...] [--figure experiments/benchmarks/scaling.png]
    python experiments/benchmarks/benchmark.py --protocol [--protocol-sweep paper|tiny] [--settings ...] [--protocol-fits em newton]

Three modes; each writes its own section ('table', 'scale', 'protocol') of the JSON file --out,
keeping the sections other runs wrote there, and each section records the machine, the threads,
its configuration and the load average (/proc/loadavg, as `uptime` shows it) before and after.

Table (default). For each setting and sample size n every method and peer fits the same data,
simulate(setting, n, range(R), seed), from the same near-truth starts (softmoe_torch.study.sweep.sweep_starts):

- torch methods (FitOptions.for_method, the same as conf/fit/<name>.yaml): em (EM, batched L-BFGS
  M-step, Anderson-accelerated), em_newton (the same EM with Newton M-steps), em_torch (EM with
  torch.optim.LBFGS per replication, the slow reference), direct
  (batched BFGS on the marginal log-likelihood) and newton (batched Newton, exact Hessian);
- peers, numpy/scipy: baseline (fit_em_scipy, the paper's EM with a scipy BFGS M-step),
  scipy_bfgs (fit_direct_bfgs, scipy BFGS on the marginal log-likelihood) and numpy_newton
  (fit_newton, Newton with the analytic Hessian);

in two modes: single (replication 0 alone) and batch (R replications; a torch method fits them
in one call; a peer's batch time is EXTRAPOLATED from K = --baseline-reps measured fits, mean
seconds per fit x R). em_torch's batch run is skipped, with a row that says so, when R x its
single-fit seconds exceeds --em-torch-budget.

Per row: wall seconds of the fit call (and per fit in batch mode); evaluations (torch: the
objective's evaluation calls, each over every replication still running, so a batch row counts
batched calls; baseline: M-step evaluations of -Q and its gradient plus the n_iter + 1 E-steps;
scipy_bfgs: value+gradient evaluations; numpy_newton: value+gradient plus Hessian evaluations;
peers' batch rows: mean per measured fit); mean iterations; mean log-likelihood; 'gap', the
largest shortfall of the row's fits from the best log-likelihood any fit (any method, peer or
mode) reached on the same replication; statuses; the worker's peak RSS; the speed-up against the
baseline and against the strongest peer (the faster of scipy_bfgs and numpy_newton in that mode).
'objective_gap' is the largest difference between a torch fit's log-likelihood and the baseline's
numpy code evaluated at the torch estimates (both sides maximise one objective). The cost exponent
of each (setting, mode, method) is the slope of log seconds on log n.

Scale (--scale). One fit of replication 0 of the first setting per method of --scale-methods
(newton, em) at each n of --scale-sizes (default 1e4, 1e5, 1e6 and 1e7 when --max-n allows):
seconds, peak RSS, the cost-vs-n exponent over 1e4 <= n <= 1e6 (over all sizes when fewer than
two lie there), and a log-log figure of seconds against n (--figure).

Protocol (--protocol). The promised command, end to end, as a subprocess per (setting, fit):
``python -m softmoe_torch.run setting=S fit=F sweep=P progress=false monitor.tensorboard=false
hydra.run.dir=<tmp>``: wall seconds (start-up included), peak memory (from a small launcher
process, so that this script's own memory is not counted: 'peak_mib', the resident memory summed
over the command and its worker processes, sampled every 0.5 s, and at least 'largest_process_mib',
the largest single process's peak from wait4), and the fits' statuses from its results.csv (how
many ended at max_iter).

Every table and scale measurement runs in a fresh worker process (this script with --worker),
warmed up by a one-iteration fit on 256 points; seconds are the wall time of the fit call alone;
peak memory is the worker's peak RSS during the fit (MiB, including interpreter, libraries and
data; reset before each fit where Linux allows it, else cumulative over the worker; 'floor_mib'
is the RSS after the imports). Peer workers never import torch. --threads T caps the threads of
both stacks (torch, OpenMP, OpenBLAS/MKL) through the environment for workers and protocol runs
alike; on a busy machine prefer --threads 1. Ratios are what count on a shared machine.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

# experiments/ on sys.path for the helpers every study shares (experiments/studykit.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import studykit  # noqa: E402

# torch, hydra, matplotlib and softmoe_torch are imported inside the functions that use them, so
# that a peer worker (which imports this module) measures numpy/scipy's memory only.
bs = studykit.study_module(__file__, "baseline_scipy")  # the numpy/scipy peers, beside this script

HERE = Path(__file__).resolve().parent
ROOT = studykit.ROOT
ALL_SETTINGS = ["distinguishable", "nondistinguishable_eta", "nondistinguishable_nu"]
TORCH_METHODS = ["em", "em_newton", "em_torch", "direct", "newton"]
PEERS = {"baseline": bs.fit_em_scipy, "scipy_bfgs": bs.fit_direct_bfgs, "numpy_newton": bs.fit_newton}
BASELINE, STRONG_PEERS = "baseline", ("scipy_bfgs", "numpy_newton")
WARMUP_N = 256
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _compose(setting: str, fit: str = "em"):
    """The Hydra config for ``setting=<setting> fit=<fit>``."""
    return studykit.compose([f"setting={setting}", f"fit={fit}"])


def _reset_peak():
    """Reset this process's peak RSS (Linux >= 4.0); elsewhere the peak stays cumulative."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _maxrss_mib(ru_maxrss: int) -> float:
    """ru_maxrss in MiB (kilobytes on Linux, bytes on macOS)."""
    return ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def _peak_mib() -> float:
    """Peak resident memory of this process in MiB: VmHWM on Linux (its ru_maxrss also counts the
    parent's memory at fork), else ru_maxrss."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 2**10
    except OSError:
        return _maxrss_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _status_counts(statuses) -> dict:
    """{'converged': 3, 'max_iter': 1, ...}: statuses counted by their kind (the text before ':')."""
    return dict(Counter(s.split(":")[0] for s in statuses))


# ---------------------------------------------------------------- table workers (fresh processes)


def _peer_start(start, r: int) -> dict:
    """Replication r's starting point in baseline_scipy's format; ``start`` peer_start.npz's arrays."""
    return {
        "beta": start["beta"][r, 0],
        "tau": float(start["tau"][r, 0]),
        "eta": start["eta"][r],
        "nu": float(start["nu"][r]),
    }


def _peer_record(peer: str, res: dict, max_iter: int) -> dict:
    """Evaluations (see the module docstring) and status of one peer fit."""
    evaluations = res["n_fev"] + res.get("n_hev", 0) + (res["n_iter"] + 1 if peer == BASELINE else 0)
    if res["converged"]:
        status = "converged"
    elif peer == "scipy_bfgs":
        status = f"stopped: {res['message']}"
    else:  # the EM and Newton loops end unconverged only at max_iter or when no step ascends
        status = "max_iter" if res["n_iter"] == max_iter else "stalled: no ascent step"
    return {"evaluations": evaluations, "status": status}


def _peer_worker(job: dict) -> dict:
    """K = job['baseline_reps'] fits of one peer, replications 0..K-1, each timed on its own."""
    data, peer, fit = Path(job["data"]), job["peer"], PEERS[job["peer"]]
    start = dict(np.load(data / "peer_start.npz"))
    options = {BASELINE: {"tol": job["tol"], "max_iter": job["max_iter"]}}.get(peer, {})
    floor = _peak_mib()

    def rep(name, r):  # copy one replication out of the file; the mapping closes at once
        return np.load(data / name, mmap_mode="r")[r].copy()

    x, y = rep("X.npy", 0), rep("Y.npy", 0)
    fit(x[:WARMUP_N], y[:WARMUP_N], **job["model"], init=_peer_start(start, 0), max_iter=1)
    fits = []
    for r in range(job["baseline_reps"]):
        x, y = rep("X.npy", r), rep("Y.npy", r)
        _reset_peak()
        t0 = time.perf_counter()
        res = fit(x, y, **job["model"], init=_peer_start(start, r), **options)
        seconds = time.perf_counter() - t0
        max_iter = options.get("max_iter", fit.__kwdefaults__["max_iter"])
        fits.append(
            {
                "seconds": seconds,
                "loglik": res["mean_loglik"],
                "n_iter": res["n_iter"],
                "peak_mib": _peak_mib(),
                **_peer_record(peer, res, max_iter),
            }
        )
    return {"floor_mib": floor, "fits": fits}


def _torch_fit(model, X, Y, start, options, data_model=None) -> dict:
    """Fit the first m = len(X) replications; time, record and (with data_model, baseline_scipy's
    eta0/nu0/f0) re-evaluate the log-likelihood at the estimates with the numpy code."""
    from softmoe_torch.estimation.driver import fit_batch

    m = X.shape[0]
    _reset_peak()
    t0 = time.perf_counter()
    res = fit_batch(model, X, Y, {k: v[:m] for k, v in start.items()}, options)
    seconds = time.perf_counter() - t0
    out = {
        "seconds": seconds,
        "loglik": res.mean_loglik.tolist(),
        "n_iter": res.n_iter.tolist(),
        "evaluations": res.n_evals,
        "status": res.status,
        "solver": res.solver,
        "fused": res.fused,
        "peak_mib": _peak_mib(),
    }
    if data_model is not None:
        from softmoe_torch.model.names import PAPER_NAMES as NAMES

        est = {k: res.params[v].numpy() for k, v in NAMES.items()}
        numpy_ll = [
            bs.mean_loglik(
                X[r].numpy(),
                Y[r].numpy(),
                beta=est["beta"][r, 0],
                tau=est["tau"][r, 0],
                eta=est["eta"][r],
                nu=est["nu"][r],
                **data_model,
            )
            for r in range(m)
        ]
        out["objective_gap"] = float(np.max(np.abs(np.array(numpy_ll) - res.mean_loglik.numpy())))
    return out


def _warm_up(model, X, Y, start, method):
    """A one-iteration fit on WARMUP_N points (first-call costs out of the timings)."""
    from softmoe_torch.estimation.driver import FitOptions

    _torch_fit(
        model,
        X[:1, :WARMUP_N],
        Y[:1, :WARMUP_N],
        start,
        FitOptions.for_method(method, max_iter=1, inner={"max_iter": 10}),
    )


def _torch_worker(job: dict) -> dict:
    """One torch method: a single fit of replication 0, then (unless em_torch's budget rule skips
    it) one batched fit of all R replications."""
    import torch

    from softmoe_torch.estimation.driver import FitOptions
    from softmoe_torch.settings.setting import Setting

    cfg, method = _compose(job["setting"]), job["method"]
    model = Setting(cfg.setting).model(dtype=torch.float64)
    options = FitOptions.for_method(method)
    floor = _peak_mib()
    data = Path(job["data"])
    X, Y = torch.from_numpy(np.load(data / "X.npy")), torch.from_numpy(np.load(data / "Y.npy"))
    start = {k: torch.from_numpy(v) for k, v in np.load(data / "start.npz").items()}
    _warm_up(model, X, Y, start, method)
    single = _torch_fit(model, X[:1], Y[:1], start, options, job["model"])
    predicted = single["seconds"] * X.shape[0]
    if method == "em_torch" and predicted > job["em_torch_budget"]:
        batch = {
            "skipped": f"R x single-fit seconds = {predicted:.0f} s > --em-torch-budget {job['em_torch_budget']:g} s"
        }
    else:
        batch = _torch_fit(model, X, Y, start, options, job["model"])
    return {"floor_mib": floor, "single": single, "batch": batch}


def _scale_worker(job: dict) -> dict:
    """One fit of one method on replication 0 of size n, simulated here (not timed)."""
    import torch

    from softmoe_torch.estimation.driver import FitOptions
    from softmoe_torch.settings.setting import Setting
    from softmoe_torch.study.simulate import simulate
    from softmoe_torch.study.sweep import sweep_starts

    cfg = _compose(job["setting"])
    setting = Setting(cfg.setting)
    model = setting.model(dtype=torch.float64)
    floor = _peak_mib()
    X, Y = simulate(setting, job["n"], range(1), seed=int(cfg.seed))
    (start,) = sweep_starts(cfg, setting, model, job["n"], [0], Y)
    _warm_up(model, X, Y, start, job["method"])
    return {"floor_mib": floor, **_torch_fit(model, X, Y, start, FitOptions.for_method(job["method"]))}


def _work(job_path: str):
    """Worker entry: read the job, run it, write the result next to it."""
    job = json.loads(Path(job_path).read_text())
    worker = {"peer": _peer_worker, "torch": _torch_worker, "scale": _scale_worker}[job["kind"]]
    if job["kind"] != "peer":  # a peer worker never imports torch
        from softmoe_torch.estimation.convergence import ConvergenceWarning

        warnings.simplefilter("ignore", ConvergenceWarning)  # unconverged fits are counted in the rows instead
    Path(job["result"]).write_text(json.dumps(worker(job)))


def _spawn(job: dict, tmp: Path, name: str) -> dict:
    """Run one job in a fresh python process; returns its result."""
    job = {**job, "result": str(tmp / f"{name}.result.json")}
    path = tmp / f"{name}.job.json"
    path.write_text(json.dumps(job))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--worker", str(path)], cwd=ROOT, check=True)
    print(f"  {name} worker: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return json.loads(Path(job["result"]).read_text())


# ---------------------------------------------------------------- table


def _peer_model(cfg) -> dict:
    """eta0, nu0 and f0 of a setting, in baseline_scipy's terms (tanh experts, Gaussian prompt)."""
    s = cfg.setting
    classes = [
        node._target_.rsplit(".", 1)[-1]
        for node in (s.pretrained.expert, s.prompt.expert, s.prompt.density, s.pretrained.density)
    ]
    f0 = classes[3].lower()
    if classes[:3] != ["TanhExpert", "TanhExpert", "Gaussian"] or f0 not in ("gaussian", "laplace"):
        raise ValueError(
            f"setting {s.name}: the numpy/scipy peers have tanh experts, a Gaussian prompt and a "
            "Gaussian or Laplace pre-trained density only"
        )
    return {"eta0": list(s.pretrained.params.eta), "nu0": float(s.pretrained.nu), "f0": f0}


def _write_data(cfg, n: int, R: int, tmp: Path):
    """Simulate R data sets of size n and their near-truth starts into tmp (X.npy, Y.npy, start.npz;
    peer_start.npz: the starts by the paper's names, for the numpy peers, which never load torch)."""
    import torch

    from softmoe_torch.model.names import PAPER_NAMES
    from softmoe_torch.settings.setting import Setting
    from softmoe_torch.study.simulate import simulate
    from softmoe_torch.study.sweep import sweep_starts

    setting = Setting(cfg.setting)
    X, Y = simulate(setting, n, range(R), seed=int(cfg.seed))
    (start,) = sweep_starts(cfg, setting, setting.model(dtype=torch.float64), n, list(range(R)), Y)
    np.save(tmp / "X.npy", X.numpy())
    np.save(tmp / "Y.npy", Y.numpy())
    np.savez(tmp / "start.npz", **{k: v.numpy() for k, v in start.items()})
    np.savez(tmp / "peer_start.npz", **{k: start[name].numpy() for k, name in PAPER_NAMES.items()})


def _row(setting, n, mode, method, fit, floor, seconds=None, extrapolated=False) -> dict:
    """One table row from a fit record whose loglik/n_iter/status are lists over replications
    0, 1, ... ('skipped': a run the em_torch rule left out)."""
    row = {
        "setting": setting,
        "n": n,
        "mode": mode,
        "method": method,
        "kind": "peer" if method in PEERS else "torch",
        "extrapolated": extrapolated,
        "floor_mib": floor,
    }
    if "skipped" in fit:
        return {**row, "seconds": None, "note": f"skipped: {fit['skipped']}"}
    seconds = fit["seconds"] if seconds is None else seconds
    keep = ("loglik", "n_iter", "status", "evaluations", "peak_mib", "objective_gap", "solver", "fused")
    return {
        **row,
        **{k: fit[k] for k in keep if k in fit},
        "fits": len(fit["loglik"]),
        "seconds": seconds,
        "seconds_per_fit": seconds / len(fit["loglik"]),
        "mean_loglik": float(np.mean(fit["loglik"])),
        "iterations": float(np.mean(fit["n_iter"])),
        "statuses": _status_counts(fit["status"]),
    }


def _merge(fits) -> dict:
    """A peer's fits of replications 0, 1, ... as one record (lists over replications; mean
    evaluations per fit; the largest peak)."""
    return {
        "loglik": [f["loglik"] for f in fits],
        "n_iter": [f["n_iter"] for f in fits],
        "status": [f["status"] for f in fits],
        "seconds": sum(f["seconds"] for f in fits),
        "evaluations": float(np.mean([f["evaluations"] for f in fits])),
        "peak_mib": max(f["peak_mib"] for f in fits),
    }


def _peer_rows(setting, n, R, peer, out) -> list:
    """A peer's single row (its fit of replication 0) and batch row (extrapolated from its K fits)."""
    fits = out["fits"]
    single = _row(setting, n, "single", peer, _merge(fits[:1]), out["floor_mib"])
    batch = _row(
        setting,
        n,
        "batch",
        peer,
        _merge(fits),
        out["floor_mib"],
        seconds=R * np.mean([f["seconds"] for f in fits]),
        extrapolated=True,
    )
    batch["seconds_per_fit"] = batch["seconds"] / R
    batch["note"] = f"extrapolated: mean seconds of {len(fits)} measured fits x {R}"
    return [single, batch]


def _compare(rows) -> list:
    """Add to the rows of one (setting, n) the gap to the best log-likelihood per replication and
    the speed-ups against the baseline and the strongest peer of the same mode."""
    best = {}
    for r in rows:
        for rep, ll in enumerate(r.get("loglik", [])):
            best[rep] = max(best.get(rep, -np.inf), ll)
    out = []
    for r in rows:
        if r["seconds"] is None:
            out.append(r)
            continue
        same_mode = {p["method"]: p["seconds"] for p in rows if p["mode"] == r["mode"] and p["kind"] == "peer"}
        strong = min((p for p in STRONG_PEERS if p in same_mode), key=same_mode.get, default=None)
        out.append(
            {
                **r,
                "gap": max(best[rep] - ll for rep, ll in enumerate(r["loglik"])),
                "speedup_baseline": same_mode[BASELINE] / r["seconds"] if BASELINE in same_mode else None,
                "strongest_peer": strong,
                "speedup_peer": same_mode[strong] / r["seconds"] if strong else None,
            }
        )
    return out


def cost_exponents(rows) -> list:
    """Slope of log seconds on log n for each (setting, mode, method) measured at two sizes or more."""
    groups = {}
    for r in rows:
        if r["seconds"] is not None:
            groups.setdefault((r["setting"], r["mode"], r["method"]), []).append((r["n"], r["seconds"]))
    out = []
    for (setting, mode, method), pts in groups.items():
        if len({n for n, _ in pts}) >= 2:
            out.append(
                {
                    "setting": setting,
                    "mode": mode,
                    "method": method,
                    "exponent": _slope(pts),
                    "sizes": sorted(n for n, _ in pts),
                }
            )
    return out


def _slope(points) -> float:
    """Least-squares slope of log y on log x for points [(x, y), ...]."""
    x, y = np.log(np.array(points, dtype=float)).T
    return float(np.polyfit(x, y, 1)[0])


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(rows) -> str:
    """The rows as a fixed-width text table."""
    head = (
        f"{'setting':<23}{'n':>8} {'mode':<7}{'method':<13}{'seconds':>9}{'s/fit':>9}{'x base':>8}{'x peer':>8}"
        f"{'evals':>8}{'iters':>7}{'mean ll':>12}{'gap':>9}{'MiB':>6}  statuses"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["seconds"] is None:
            lines.append(f"{r['setting']:<23}{r['n']:>8} {r['mode']:<7}{r['method']:<13}  {r['note']}")
            continue
        secs = f"{r['seconds']:.2f}" + ("*" if r["extrapolated"] else " ")
        statuses = ", ".join(f"{k} {v}" for k, v in r["statuses"].items())
        lines.append(
            f"{r['setting']:<23}{r['n']:>8} {r['mode']:<7}{r['method']:<13}{secs:>9}"
            f"{r['seconds_per_fit']:>9.3f}{_fmt(r['speedup_baseline'], '.3g'):>8}"
            f"{_fmt(r['speedup_peer'], '.3g'):>8}{r['evaluations']:>8.0f}{r['iterations']:>7.1f}"
            f"{r['mean_loglik']:>12.6f}{r['gap']:>9.1e}{r['peak_mib']:>6.0f}  {statuses}"
        )
    lines.append(
        "* peers' batch seconds are extrapolated (mean seconds of the measured fits x R). x base, x peer: "
        "speed-up against the baseline and the strongest peer (faster of scipy_bfgs, numpy_newton) in the "
        "same mode. gap: largest shortfall from the best log-likelihood reached on the same replication. "
        "evals: see the module docstring."
    )
    return "\n".join(lines)


def _measure(cfg, n: int, args) -> list:
    """The rows of one (setting, n): data and starts, one worker per peer and per torch method.
    The baseline's EM contract (tol, max_iter) is conf/fit/em.yaml's."""
    name = cfg.setting.name
    print(f"{name} n={n}: {', '.join(args.peers + args.methods)}", file=sys.stderr, flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _write_data(cfg, n, args.reps, tmp)
        job = {"data": str(tmp), "model": _peer_model(cfg), "setting": name}
        for p in args.peers:
            out = _spawn(
                {
                    **job,
                    "kind": "peer",
                    "peer": p,
                    "baseline_reps": args.baseline_reps,
                    "tol": float(cfg.fit.tol),
                    "max_iter": int(cfg.fit.max_iter),
                },
                tmp,
                p,
            )
            rows += _peer_rows(name, n, args.reps, p, out)
        for m in args.methods:
            out = _spawn({**job, "kind": "torch", "method": m, "em_torch_budget": args.em_torch_budget}, tmp, m)
            rows += [_row(name, n, mode, m, out[mode], out["floor_mib"]) for mode in ("single", "batch")]
    return _compare(rows)


def run_table(args):
    """Every (setting, n) of the arguments; yields the section so far after every size."""
    rows = []
    for name in args.settings:
        cfg = _compose(name)
        for n in args.sizes:
            rows += _measure(cfg, n, args)
            yield {"rows": rows, "cost_exponents": cost_exponents(rows)}


def print_table(section):
    print(table(section["rows"]))
    print("\ncost exponents (slope of log seconds on log n):")
    for e in section["cost_exponents"]:
        print(f"  {e['setting']:<24}{e['mode']:<7}{e['method']:<13}{e['exponent']:6.2f}  (n = {e['sizes']})")


# ---------------------------------------------------------------- scale


def scale_sizes(args) -> list:
    """--scale-sizes, else the powers of ten from 1e4 to --max-n."""
    return args.scale_sizes or [10**k for k in range(4, 8) if 10**k <= args.max_n]


def _scale_exponent(points) -> dict:
    """Cost-vs-n exponent over 1e4 <= n <= 1e6, over all sizes when fewer than two lie there."""
    inside = [(n, s) for n, s in points if 10**4 <= n <= 10**6]
    pts = inside if len(inside) >= 2 else points
    return {"exponent": _slope(pts) if len(pts) >= 2 else None, "sizes": [n for n, _ in pts]}


def plot_scaling(rows, exponents: dict, path: Path):
    """Log-log figure of seconds against n, one line per method (labelled with its exponent), with a
    slope-1 guide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method, e in exponents.items():
        pts = sorted((r["n"], r["seconds"]) for r in rows if r["method"] == method)
        ax.loglog(*zip(*pts), "o-", label=f"{method} (exponent {_fmt(e['exponent'], '.2f')})")
    n0, s0 = min((r["n"], r["seconds"]) for r in rows)
    n1 = max(r["n"] for r in rows)
    ax.loglog([n0, n1], [s0, s0 * n1 / n0], "k:", label="slope 1")
    ax.set(xlabel="n (samples)", ylabel="seconds per fit", title=f"one fit, {rows[0]['setting']}")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_scale(args):
    """One worker per (n, method) of the first setting; yields the section after every fit, then
    with the exponents and the figure."""
    rows, setting = [], args.settings[0]
    for n in scale_sizes(args):
        for method in args.scale_methods:
            with tempfile.TemporaryDirectory() as tmp:
                out = _spawn({"kind": "scale", "setting": setting, "n": n, "method": method}, Path(tmp), method)
            rows.append(
                {
                    "setting": setting,
                    "n": n,
                    "method": method,
                    **out,
                    "mean_loglik": out["loglik"][0],
                    "n_iter": out["n_iter"][0],
                    "status": out["status"][0],
                }
            )
            yield {"rows": rows}
    exponents = {
        m: _scale_exponent([(r["n"], r["seconds"]) for r in rows if r["method"] == m]) for m in args.scale_methods
    }
    plot_scaling(rows, exponents, Path(args.figure))
    yield {"rows": rows, "exponents": exponents, "figure": str(args.figure)}


def print_scale(section):
    print(f"{'method':<9}{'n':>10}{'seconds':>10}{'peak MiB':>10}{'iters':>7}{'evals':>7}  status")
    for r in section["rows"]:
        print(
            f"{r['method']:<9}{r['n']:>10}{r['seconds']:>10.3f}{r['peak_mib']:>10.0f}{r['n_iter']:>7}"
            f"{r['evaluations']:>7}  {r['status']}"
        )
    for m, e in section["exponents"].items():
        print(f"cost-vs-n exponent, {m}: {_fmt(e['exponent'], '.2f')} (n = {e['sizes']})")
    print(f"figure: {section['figure']}")


# ---------------------------------------------------------------- protocol


def protocol_command(setting: str, fit: str, sweep: str, run_dir: Path) -> list:
    """The promised command for one setting and fit."""
    return studykit.run_command(
        [f"setting={setting}", f"fit={fit}", f"sweep={sweep}", "progress=false", "monitor.tensorboard=false"],
        run_dir=run_dir,
    )


def _protocol_run(setting: str, fit: str, sweep: str) -> dict:
    """Run the command through studykit.measured in a temporary directory; wall, peak RSS and statuses."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cmd = protocol_command(setting, fit, sweep, tmp / "run")
        usage = studykit.measured(cmd, tmp / "log.txt")
        if usage["returncode"] != 0:
            tail = (tmp / "log.txt").read_text()[-3000:]
            raise RuntimeError(f"{' '.join(cmd)} exited with {usage['returncode']}:\n{tail}")
        results = studykit.read_results(tmp / "run")
    statuses = _status_counts(r["status"] for r in results)
    command = " ".join(["python", *cmd[1:-1], "hydra.run.dir=<tmp>"])
    return {
        "setting": setting,
        "fit": fit,
        "sweep": sweep,
        "command": command,
        "wall_seconds": usage["wall_seconds"],
        "peak_mib": max(_maxrss_mib(usage["maxrss"]), usage["tree_kib"] / 2**10),
        "largest_process_mib": _maxrss_mib(usage["maxrss"]),
        "fits": len(results),
        "statuses": statuses,
        "max_iter": statuses.get("max_iter", 0),
        "fit_seconds": sum(float(r["seconds"]) for r in results),
    }


def run_protocol(args):
    """One command per (setting, fit); yields the section after each."""
    rows = []
    for setting in args.settings:
        for fit in args.protocol_fits:
            print(f"protocol: setting={setting} fit={fit} sweep={args.protocol_sweep}", file=sys.stderr, flush=True)
            rows.append(_protocol_run(setting, fit, args.protocol_sweep))
            yield {"rows": rows}


def print_protocol(section):
    print(f"{'setting':<24}{'fit':<10}{'wall s':>9}{'fits s':>9}{'peak MiB':>10}{'fits':>6}{'max_iter':>9}  statuses")
    for r in section["rows"]:
        statuses = ", ".join(f"{k} {v}" for k, v in r["statuses"].items())
        print(
            f"{r['setting']:<24}{r['fit']:<10}{r['wall_seconds']:>9.1f}{r['fit_seconds']:>9.1f}{r['peak_mib']:>10.0f}"
            f"{r['fits']:>6}{r['max_iter']:>9}  {statuses}"
        )
    print("wall s: the command end to end (start-up, fits, report); fits s: the fits' own seconds (results.csv)")


# ---------------------------------------------------------------- driver


def machine_info() -> dict:
    """Where the numbers were measured: platform, cores, library versions and threads."""
    import scipy
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "threads_env": {v: os.environ.get(v) for v in THREAD_VARS},
        "peak_rss_reset": os.access("/proc/self/clear_refs", os.W_OK),
    }


MODES = {
    "table": (run_table, print_table),
    "scale": (run_scale, print_scale),
    "protocol": (run_protocol, print_protocol),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--scale", action="store_true", help="the scaling mode (see above)")
    mode.add_argument("--protocol", action="store_true", help="time the promised CLI commands end to end")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--reps", type=int, default=40, help="R, replications fitted together in batch mode")
    p.add_argument("--settings", nargs="+", default=ALL_SETTINGS, help="scale uses the first one")
    p.add_argument("--methods", nargs="+", default=TORCH_METHODS, choices=TORCH_METHODS)
    p.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS))
    p.add_argument("--baseline-reps", type=int, default=3, help="K, fits each peer measures in batch mode")
    p.add_argument(
        "--em-torch-budget",
        type=float,
        default=300.0,
        help="skip em_torch's batch run when R x its single-fit seconds exceeds this",
    )
    p.add_argument("--scale-sizes", type=int, nargs="+", help="default: 1e4, 1e5, 1e6 (and 1e7 with --max-n)")
    p.add_argument("--max-n", type=int, default=10**6, help="largest default scale size")
    p.add_argument("--scale-methods", nargs="+", default=["newton", "em"], choices=TORCH_METHODS)
    p.add_argument("--figure", default=str(HERE / "scaling.png"), help="the scaling figure (PNG)")
    p.add_argument("--protocol-sweep", default="paper", choices=["paper", "tiny"])
    p.add_argument("--protocol-fits", nargs="+", default=["em", "newton"], choices=TORCH_METHODS)
    p.add_argument("--threads", type=int, help="threads for both stacks (default: the libraries' own)")
    p.add_argument("--out", default=str(HERE / "benchmark.json"))
    p.add_argument("--quick", action="store_true", help="sizes 1000 3000, reps 4, baseline-reps 1, first setting only")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.reps, args.baseline_reps, args.settings = [1000, 3000], 4, 1, args.settings[:1]
    if not 1 <= args.baseline_reps <= args.reps:
        p.error("need 1 <= --baseline-reps <= --reps")
    args.mode = "scale" if args.scale else "protocol" if args.protocol else "table"
    return args


def _write_section(out: Path, name: str, section: dict):
    """Write one mode's section into the JSON file, keeping the other sections there."""
    report = json.loads(out.read_text()) if out.exists() else {}
    report = {"description": __doc__, **{k: v for k, v in report.items() if k != "description"}, name: section}
    out.write_text(json.dumps(report, indent=1))


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return _work(args.worker)
    if args.threads:  # before torch is first imported; workers and protocol runs inherit it
        os.environ.update({v: str(args.threads) for v in THREAD_VARS})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k not in ("worker", "out", "scale", "protocol")}
    section = {
        "machine": machine_info(),
        "config": config,
        "load_before": studykit.load_average(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    began = time.perf_counter()
    run, show = MODES[args.mode]
    for progress in run(args):  # written after every step, so a long run keeps its progress
        section.update(progress, wall_seconds=time.perf_counter() - began, load_after=studykit.load_average())
        _write_section(out, args.mode, section)
    show(section)
    print(
        f"\nload average (1, 5, 15 min) before {section['load_before']}, after {section['load_after']}; "
        f"{section['machine']['cpu_count']} cores, torch threads {section['machine']['torch_threads']}"
    )
    print(f"{args.mode} written to {out} ({section['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
