"""A sweep over sample sizes x replications -> results.csv, one row per fit; resumable.

Each sample size's missing replications are simulated and fitted together (one batched call);
after every batch the results file is rewritten atomically, so an interruption loses only the
batch in flight and a rerun into the same directory skips every finished fit."""
import csv
import json
import os
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .device import resolve_device, resolve_dtype
from .convergence import ConvergenceWarning
from .em import FitOptions, fit_best_of
from .init import starting_points
from .paper import PAPER_PARAMS, param_errors
from .settings import Setting
from .simulate import data_seed, simulate

COLUMNS = ["setting", "n", "rep", "seed", *(f"err_{p}" for p in PAPER_PARAMS),
           "mean_loglik", "n_iter", "converged", "status", "at_bound", "seconds"]


def sample_sizes(sweep: DictConfig) -> list:
    """The sweep's sample sizes: ``sizes`` if given, else ``num_sizes`` log-spaced integers."""
    if sweep.get("sizes"):
        sizes = sorted({int(n) for n in sweep.sizes})
    else:
        if not 1 <= sweep.n_min <= sweep.n_max or sweep.num_sizes < 1:
            raise ValueError("sweep needs 1 <= n_min <= n_max and num_sizes >= 1")
        grid = np.logspace(np.log10(sweep.n_min), np.log10(sweep.n_max), int(sweep.num_sizes))
        sizes = sorted({int(round(n)) for n in grid})
    if sizes[0] < 2:
        raise ValueError(f"sample sizes must be at least 2, got {sizes[0]}")
    return sizes


def fit_options(cfg: DictConfig, dtype) -> FitOptions:
    """FitOptions from the ``fit`` config group; float32 gets looser tolerances."""
    f = OmegaConf.to_container(cfg.fit, resolve=True)
    if dtype == torch.float32:
        f["tol"], f["gtol"] = max(f.get("tol", 0), 1e-5), max(f.get("gtol", 0), 1e-5)
        inner = f.setdefault("inner", {})
        inner["ftol"], inner["gtol"] = max(inner.get("ftol", 0), 1e-7), max(inner.get("gtol", 0), 1e-5)
    try:
        return FitOptions(**f)
    except TypeError as err:  # an unknown key or a value of the wrong type
        raise ValueError(f"bad fit options: {err}") from None


def sweep_starts(cfg, setting, model, n, reps, Y):
    """The init policy's starts {name: (R, ...)} for replications ``reps``; each replication's
    starts depend only on (seed, setting, n, rep, start)."""
    policy = cfg.init.policy
    if policy == "near_truth":
        seed_of = lambda i, j: data_seed(cfg.seed + 1, setting.name, n, reps[j])  # noqa: E731
    else:
        seed_of = lambda i, j: data_seed(cfg.seed, f"{setting.name}/random{i}", n, reps[j])  # noqa: E731
    truth = setting.truth(n) if policy == "near_truth" else None
    return starting_points(model, Y, policy, seed_of, truth=truth, scale=float(cfg.init.get("scale", 0.1)),
                           n_init=int(cfg.init.get("n_init", 1)))


@dataclass
class Results:
    """The rows of results.csv, keyed by (n, rep, seed)."""

    path: Path
    rows: list

    @classmethod
    def load(cls, path):
        path = Path(path)
        rows = []
        if path.exists():
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
        return cls(path, rows)

    def done(self, setting: str, seed: int) -> set:
        """(n, rep) of finished fits; a batch that raised ('error: ...') is not finished."""
        return {(int(r["n"]), int(r["rep"])) for r in self.rows
                if r["setting"] == setting and int(r["seed"]) == seed and not r["status"].startswith("error")}

    def add(self, new_rows):
        """Add rows (replacing earlier rows of the same fits) and rewrite the file atomically
        (write a temporary file, then rename)."""
        key = lambda r: (r["setting"], int(r["n"]), int(r["rep"]), int(r["seed"]))  # noqa: E731
        fresh = {key(r) for r in new_rows}
        self.rows = [r for r in self.rows if key(r) not in fresh] + list(new_rows)
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


def _rows(setting, n, reps, seed, result, errors):
    share = result.seconds / len(reps)
    return [
        {
            "setting": setting.name, "n": n, "rep": rep, "seed": seed,
            **{f"err_{p}": float(errors[p][j]) for p in PAPER_PARAMS},
            "mean_loglik": float(result.mean_loglik[j]), "n_iter": int(result.n_iter[j]),
            "converged": bool(result.converged[j]), "status": result.status[j],
            "at_bound": " ".join(result.at_bound[j]), "seconds": share,
        }
        for j, rep in enumerate(reps)
    ]


def _failed_rows(setting, n, reps, seed, reason):
    nan = float("nan")
    return [
        {"setting": setting.name, "n": n, "rep": rep, "seed": seed, **{f"err_{p}": nan for p in PAPER_PARAMS},
         "mean_loglik": nan, "n_iter": 0, "converged": False, "status": f"error: {reason}", "at_bound": "", "seconds": 0.0}
        for rep in reps
    ]


def _check_fingerprint(cfg: DictConfig, out_dir: Path):
    """Refuse to resume into a directory whose results came from another configuration (setting,
    fit, init or dtype); the first run writes fingerprint.json."""
    keys = ("setting", "fit", "init", "dtype")
    mine = json.loads(json.dumps({k: OmegaConf.to_container(cfg[k], resolve=True) if k != "dtype" else cfg[k] for k in keys}))
    path = out_dir / "fingerprint.json"
    if path.exists():
        theirs = json.loads(path.read_text())
        changed = [k for k in keys if theirs.get(k) != mine[k]]
        if changed:
            raise ValueError(f"{out_dir} holds results of another configuration (different {', '.join(changed)}); "
                             "choose another directory with hydra.run.dir=...")
    else:
        path.write_text(json.dumps(mine, indent=2))


def run_study(cfg: DictConfig, out_dir, monitor=None) -> Results:
    """Run (or resume) the sweep of ``cfg`` into out_dir/results.csv; returns all rows."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    setting = Setting(cfg.setting)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    opts = fit_options(cfg, dtype)
    sizes = sample_sizes(cfg.sweep)
    reps_all = list(range(int(cfg.sweep.reps)))
    if not reps_all:
        raise ValueError("sweep.reps must be at least 1")
    model = setting.model(dtype=dtype, device=device)
    setting.truth(sizes[0])  # a setting without a truth fails here, in one line, not per batch
    _check_fingerprint(cfg, out_dir)
    results = Results.load(out_dir / "results.csv")
    done = results.done(setting.name, int(cfg.seed))
    todo = [(n, [r for r in reps_all if (n, r) not in done]) for n in sizes]
    todo = [(n, reps) for n, reps in todo if reps]
    n_todo = sum(len(r) for _, r in todo)
    print(f"{setting.name}: {n_todo} fits to run, {len(sizes) * len(reps_all) - n_todo} already done in {out_dir}")
    bar = tqdm(total=n_todo, desc=f"{setting.name} fits", unit="fit", disable=not cfg.progress)
    for n, reps in todo:
        bar.set_postfix(n=n)
        try:
            X, Y = simulate(setting, n, reps, int(cfg.seed), dtype=dtype, device=device)
            starts = sweep_starts(cfg, setting, model, n, reps, Y)
            with warnings.catch_warnings():  # unconverged fits are counted in the report instead
                warnings.simplefilter("ignore", ConvergenceWarning)
                result = fit_best_of(model, X, Y, starts, opts)
            errors = param_errors(result.params, setting.truth(n))
            rows = _rows(setting, n, reps, int(cfg.seed), result, errors)
            if monitor is not None:
                monitor.log_fits(n, reps, result)
        except (RuntimeError, ValueError, torch.cuda.OutOfMemoryError) as err:
            tqdm.write(f"fits at n={n} failed: {err.__class__.__name__}: {err}")
            traceback.print_exc()
            rows = _failed_rows(setting, n, reps, int(cfg.seed), f"{err.__class__.__name__}: {err}")
        results.add(rows)
        bar.update(len(reps))
    bar.close()
    return results
