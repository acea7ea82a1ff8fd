"""Benchmark softmoe_torch against the paper's method, EM with a scipy BFGS M-step
(experiments/baseline_scipy.py):

    python experiments/benchmark.py [--sizes 1000 10000 100000] [--reps 40] [--settings ...]
        [--methods em em_batched direct] [--baseline-reps 3] [--out experiments/benchmark.json]
        [--em-batch-budget 300] [--threads T] [--quick]

For each setting and sample size n both sides fit the same data, simulate(setting, n, range(R),
seed), from the same near-truth starts (study.starting_points), in two modes:

- single: replication 0 alone, the baseline against each method (conf/fit/<method>.yaml);
- batch: R replications, each method in one call on X (R, n, d), against R baseline fits whose
  time is EXTRAPOLATED from K measured ones (mean seconds per fit x R); log-likelihood
  differences are over those K replications.

Every measurement runs in a fresh worker process (this script with --worker), warmed up by a
one-iteration fit on 256 points; seconds are the wall time of the fit call alone; peak memory is
the worker's peak RSS during the fit (MiB, including interpreter, libraries and data; the peak is
reset before each fit where Linux allows it, else it accumulates over the worker). The baseline
worker never imports torch, so its memory is numpy/scipy's alone. --threads T caps the threads of
both stacks (torch, OpenMP, OpenBLAS/MKL) through the environment; compare like with like, and on
a busy machine prefer --threads 1 (idle threads competing for cores slow torch down severalfold).

Rule for ``em`` (torch LBFGS M-step, one replication after another, so its cost grows linearly
in R): its batch run is skipped, with a row that says so, when R x its single-fit seconds at that
setting and n exceeds --em-batch-budget seconds.

The cost exponent of each (setting, mode, method) is the slope of log seconds on log n.

The JSON (--out) holds the machine, the configuration, these notes, the exponents and one row per
(setting, n, mode, method) with per-fit log-likelihoods, iterations and statuses; 'floor_mib' is
the worker's RSS after its imports, before the data; 'objective_gap' is the largest difference
between torch's log-likelihood and the baseline's numpy code evaluated at the torch estimates.
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
from pathlib import Path

import numpy as np

# torch, hydra and softmoe_torch are imported inside the functions that use them, so that the
# baseline worker (which imports this module) measures numpy/scipy's memory only.
import baseline_scipy as bs

ROOT = Path(__file__).resolve().parents[1]
ALL_SETTINGS = ["distinguishable", "nondistinguishable_eta", "nondistinguishable_nu"]
ALL_METHODS = ["em", "em_batched", "direct"]
BASELINE = "baseline"
WARMUP_N = 256
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
NAMES = {"beta": "gate.beta", "tau": "gate.tau", "eta": "prompts.0.expert.eta", "nu": "prompts.0.nu"}


def _compose(setting: str, fit: str):
    """The Hydra config for ``setting=<setting> fit=<fit>``."""
    from hydra import compose, initialize_config_dir

    from softmoe_torch.configs import register_resolvers

    register_resolvers()  # used by conf/setting

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"setting={setting}", f"fit={fit}"])


def _reset_peak():
    """Reset this process's peak RSS (Linux >= 4.0); elsewhere the peak stays cumulative."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_mib() -> float:
    """Peak resident memory of this process in MiB: VmHWM on Linux (its ru_maxrss also counts the
    parent's memory at fork), else ru_maxrss (bytes on macOS)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 2**10
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ---------------------------------------------------------------- workers (fresh processes)


def _baseline_start(start, r: int) -> dict:
    """Replication r's starting point in fit_em_scipy's format."""
    return {"beta": start[NAMES["beta"]][r, 0], "tau": float(start[NAMES["tau"]][r, 0]),
            "eta": start[NAMES["eta"]][r], "nu": float(start[NAMES["nu"]][r])}


def _baseline_worker(job: dict) -> dict:
    """K = job['baseline_reps'] baseline fits, one after another, each timed on its own."""
    data, model = Path(job["data"]), job["model"]
    start = dict(np.load(data / "start.npz"))
    floor = _peak_mib()

    def rep(name, r):  # copy one replication out of the file; the mapping closes at once
        return np.load(data / name, mmap_mode="r")[r].copy()

    x, y = rep("X.npy", 0), rep("Y.npy", 0)
    bs.fit_em_scipy(x[:WARMUP_N], y[:WARMUP_N], **model, init=_baseline_start(start, 0), max_iter=1)
    fits = []
    for r in range(job["baseline_reps"]):
        x, y = rep("X.npy", r), rep("Y.npy", r)
        _reset_peak()
        t0 = time.perf_counter()
        res = bs.fit_em_scipy(x, y, **model, init=_baseline_start(start, r), tol=job["tol"], max_iter=job["max_iter"])
        fits.append({"seconds": time.perf_counter() - t0, "loglik": [res["mean_loglik"]], "n_iter": [res["n_iter"]],
                     "converged": [res["converged"]], "peak_mib": _peak_mib()})
    return {"floor_mib": floor, "fits": fits}


def _torch_worker(job: dict) -> dict:
    """One method: a single fit on replication 0, then (unless the em rule skips it) one batched
    fit of all R replications. Each fit's log-likelihood is re-evaluated by the baseline's numpy
    code at the torch estimates ('objective_gap'), so both sides are known to share one objective."""
    import dataclasses

    import torch

    from softmoe_torch.em import fit
    from softmoe_torch.settings import Setting
    from softmoe_torch.study import fit_options

    cfg = _compose(job["setting"], job["method"])
    model = Setting(cfg.setting).model(dtype=torch.float64)
    opts = fit_options(cfg, torch.float64)
    floor = _peak_mib()
    data = Path(job["data"])
    X, Y = torch.from_numpy(np.load(data / "X.npy")), torch.from_numpy(np.load(data / "Y.npy"))
    start = {k: torch.from_numpy(v) for k, v in np.load(data / "start.npz").items()}

    def first(m):
        return {k: v[:m] for k, v in start.items()}

    def run(m, size=None, options=opts):
        _reset_peak()
        t0 = time.perf_counter()
        res = fit(model, X[:m, :size], Y[:m, :size], first(m), options)
        seconds = time.perf_counter() - t0
        est = {k: res.params[v].numpy() for k, v in NAMES.items()}
        numpy_ll = [bs.mean_loglik(X[r].numpy(), Y[r].numpy(), beta=est["beta"][r, 0], tau=est["tau"][r, 0],
                                   eta=est["eta"][r], nu=est["nu"][r], **job["model"]) for r in range(m)]
        return {"seconds": seconds, "loglik": res.mean_loglik.tolist(), "n_iter": res.n_iter.tolist(),
                "converged": res.converged.tolist(), "status": res.status, "peak_mib": _peak_mib(),
                "objective_gap": float(np.max(np.abs(np.array(numpy_ll) - res.mean_loglik.numpy())))}

    with warnings.catch_warnings():  # unconverged fits are counted in the rows instead
        warnings.simplefilter("ignore", RuntimeWarning)
        run(1, WARMUP_N, dataclasses.replace(opts, max_iter=1, inner=dataclasses.replace(opts.inner, max_iter=10)))
        single = run(1)
        R = X.shape[0]
        predicted = single["seconds"] * R
        if job["method"] == "em" and predicted > job["em_batch_budget"]:
            batch = {"skipped": f"R x single-fit seconds = {predicted:.0f} s > --em-batch-budget {job['em_batch_budget']:g} s"}
        else:
            batch = run(R)
    return {"floor_mib": floor, "single": single, "batch": batch}


def _work(job_path: str):
    """Worker entry: read the job, run it, write the result next to it."""
    job = json.loads(Path(job_path).read_text())
    result = _baseline_worker(job) if job["kind"] == BASELINE else _torch_worker(job)
    Path(job["result"]).write_text(json.dumps(result))


def _spawn(job: dict, tmp: Path) -> dict:
    """Run one job in a fresh python process; returns its result."""
    name = job["kind"] if job["kind"] == BASELINE else job["method"]
    job = {**job, "result": str(tmp / f"{name}.result.json")}
    path = tmp / f"{name}.job.json"
    path.write_text(json.dumps(job))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--worker", str(path)], cwd=ROOT, check=True)
    print(f"  {name} worker: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return json.loads(Path(job["result"]).read_text())


# ---------------------------------------------------------------- driver


def _baseline_model(cfg) -> dict:
    """eta0, nu0 and f0 of a setting, in fit_em_scipy's terms (tanh experts, Gaussian prompt)."""
    s = cfg.setting
    classes = [node._target_.rsplit(".", 1)[-1] for node in
               (s.pretrained.expert, s.prompt.expert, s.prompt.density, s.pretrained.density)]
    f0 = classes[3].lower()
    if classes[:3] != ["TanhExpert", "TanhExpert", "Gaussian"] or f0 not in ("gaussian", "laplace"):
        raise ValueError(f"setting {s.name}: the scipy baseline has tanh experts, a Gaussian prompt and a Gaussian "
                         "or Laplace pre-trained density only")
    return {"eta0": list(s.pretrained.params.eta), "nu0": float(s.pretrained.nu), "f0": f0}


def _write_data(cfg, n: int, R: int, tmp: Path):
    """Simulate R data sets of size n and their near-truth starts into tmp (X.npy, Y.npy, start.npz)."""
    import torch

    from softmoe_torch.settings import Setting
    from softmoe_torch.simulate import simulate
    from softmoe_torch.study import starting_points

    setting = Setting(cfg.setting)
    X, Y = simulate(setting, n, range(R), seed=int(cfg.seed))
    (start,) = starting_points(cfg, setting, setting.model(dtype=torch.float64), n, range(R), Y)
    np.save(tmp / "X.npy", X.numpy())
    np.save(tmp / "Y.npy", Y.numpy())
    np.savez(tmp / "start.npz", **{k: v.numpy() for k, v in start.items()})


def _row(setting, n, mode, method, fit, fits, floor, seconds=None, extrapolated=False):
    """One table row from a worker's fit record ('skipped': a run the em rule left out)."""
    row = {"setting": setting, "n": n, "mode": mode, "method": method, "fits": fits, "extrapolated": extrapolated,
           "floor_mib": floor}
    if "skipped" in fit:
        return {**row, "seconds": None, "note": f"skipped: {fit['skipped']}"}
    keep = ("loglik", "n_iter", "converged", "peak_mib", "objective_gap", "status")
    return {**row, "seconds": fit["seconds"] if seconds is None else seconds,
            "mean_loglik": float(np.mean(fit["loglik"])), "iterations": float(np.mean(fit["n_iter"])),
            "n_converged": int(np.sum(fit["converged"])), **{k: fit[k] for k in keep if k in fit}}


def _compare(row, base, K):
    """Add speed-up and log-likelihood differences (torch minus baseline, first K replications)."""
    if row["seconds"] is None:
        return row
    delta = np.array(row["loglik"][:K]) - np.array(base["loglik"][:K])
    return {**row, "speedup": base["seconds"] / row["seconds"], "delta_loglik": float(delta.mean()),
            "min_delta_loglik": float(delta.min())}


def _rows_for(setting, n, R, K, base, torch_runs):
    """Rows of one (setting, n): the baseline and every method, single and batch."""
    fits = base["fits"]
    merged = {"loglik": [f["loglik"][0] for f in fits], "n_iter": [f["n_iter"][0] for f in fits],
              "converged": [f["converged"][0] for f in fits], "peak_mib": max(f["peak_mib"] for f in fits)}
    base_single = _row(setting, n, "single", BASELINE, fits[0], 1, base["floor_mib"])
    base_batch = _row(setting, n, "batch", BASELINE, merged, R, base["floor_mib"],
                      seconds=R * np.mean([f["seconds"] for f in fits]), extrapolated=True)
    base_batch["note"] = f"extrapolated: mean seconds of {K} measured fits x {R}"
    rows = [{**base_single, "speedup": 1.0, "delta_loglik": 0.0}, {**base_batch, "speedup": 1.0, "delta_loglik": 0.0}]
    for method, out in torch_runs.items():
        rows.append(_compare(_row(setting, n, "single", method, out["single"], 1, out["floor_mib"]), base_single, 1))
        rows.append(_compare(_row(setting, n, "batch", method, out["batch"], R, out["floor_mib"]), base_batch, K))
    return rows


def cost_exponents(rows) -> list:
    """Slope of log seconds on log n for each (setting, mode, method) measured at two sizes or more."""
    groups = {}
    for r in rows:
        if r["seconds"] is not None:
            groups.setdefault((r["setting"], r["mode"], r["method"]), []).append((r["n"], r["seconds"]))
    out = []
    for (setting, mode, method), pts in groups.items():
        n, s = np.log(np.array(pts, dtype=float)).T
        if len(set(n)) >= 2:
            out.append({"setting": setting, "mode": mode, "method": method, "exponent": float(np.polyfit(n, s, 1)[0]),
                        "sizes": sorted(int(v) for v, _ in pts)})
    return out


def machine_info() -> dict:
    """Where the numbers were measured: platform, cores, library versions and threads, load."""
    import scipy
    import torch

    return {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "numpy": np.__version__, "scipy": scipy.__version__, "load_average": os.getloadavg(),
            "threads_env": {v: os.environ.get(v) for v in THREAD_VARS},
            "peak_rss_reset": os.access("/proc/self/clear_refs", os.W_OK)}


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(rows) -> str:
    """The rows as a fixed-width text table (* = extrapolated seconds)."""
    head = f"{'setting':<24}{'n':>8} {'mode':<7}{'method':<11}{'seconds':>10}{'speedup':>9}{'mean ll':>12}" \
           f"{'d ll':>10}{'iters':>8}{'conv':>8}{'MiB':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        secs = _fmt(r["seconds"], ".2f") + ("*" if r["extrapolated"] else " ")
        conv = "-" if r["seconds"] is None else f"{r['n_converged']}/{len(r['loglik'])}"
        lines.append(f"{r['setting']:<24}{r['n']:>8} {r['mode']:<7}{r['method']:<11}{secs:>10}"
                     f"{_fmt(r.get('speedup'), '.3g'):>9}{_fmt(r.get('mean_loglik'), '.6f'):>12}"
                     f"{_fmt(r.get('delta_loglik'), '.1e'):>10}{_fmt(r.get('iterations'), '.1f'):>8}{conv:>8}"
                     f"{_fmt(r.get('peak_mib'), '.0f'):>7}" + (f"  {r['note']}" if r.get("note") and r["seconds"] is None else ""))
    lines.append("* baseline batch seconds are extrapolated (mean seconds of the measured fits x R); "
                 "d ll = torch minus baseline mean log-likelihood on the same data")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--reps", type=int, default=40, help="R, replications fitted together in batch mode")
    p.add_argument("--settings", nargs="+", default=ALL_SETTINGS)
    p.add_argument("--methods", nargs="+", default=ALL_METHODS, choices=ALL_METHODS)
    p.add_argument("--baseline-reps", type=int, default=3, help="K, baseline fits measured in batch mode")
    p.add_argument("--em-batch-budget", type=float, default=300.0,
                   help="skip em's batch run when R x its single-fit seconds exceeds this")
    p.add_argument("--threads", type=int, help="threads for both stacks (default: the libraries' own)")
    p.add_argument("--out", default=str(ROOT / "experiments" / "benchmark.json"))
    p.add_argument("--quick", action="store_true", help="sizes 1000 3000, reps 4, baseline-reps 1, first setting only")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.reps, args.baseline_reps, args.settings = [1000, 3000], 4, 1, args.settings[:1]
    if not 1 <= args.baseline_reps <= args.reps:
        p.error("need 1 <= --baseline-reps <= --reps")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return _work(args.worker)
    if args.threads:  # before torch is first imported; the workers inherit it
        os.environ.update({v: str(args.threads) for v in THREAD_VARS})
    began = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"description": __doc__, "machine": machine_info(),
              "config": {k: v for k, v in vars(args).items() if k not in ("worker", "out")}, "rows": []}
    R, K = args.reps, args.baseline_reps
    for name in args.settings:
        cfg = _compose(name, "em")
        model = _baseline_model(cfg)
        for n in args.sizes:
            print(f"{name} n={n}: baseline ({K} fits) + {', '.join(args.methods)}", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                _write_data(cfg, n, R, tmp)
                job = {"data": str(tmp), "model": model, "setting": name}
                base = _spawn({**job, "kind": BASELINE, "baseline_reps": K, "tol": float(cfg.fit.tol),
                               "max_iter": int(cfg.fit.max_iter)}, tmp)
                runs = {m: _spawn({**job, "kind": "torch", "method": m, "em_batch_budget": args.em_batch_budget}, tmp)
                        for m in args.methods}
            report["rows"] += _rows_for(name, n, R, K, base, runs)
            report["cost_exponents"] = cost_exponents(report["rows"])
            report["wall_seconds"] = time.perf_counter() - began
            out.write_text(json.dumps(report, indent=1))  # after every size, so a long run keeps its progress
    print(table(report["rows"]))
    print("\ncost exponents (slope of log seconds on log n):")
    for e in report["cost_exponents"]:
        print(f"  {e['setting']:<24}{e['mode']:<7}{e['method']:<11}{e['exponent']:6.2f}  (n = {e['sizes']})")
    print(f"\nwritten to {out} ({report['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
