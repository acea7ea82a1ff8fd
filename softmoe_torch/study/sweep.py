"""A sweep over sample sizes x replications -> results.csv, one row per fit; resumable.

Each sample size's missing replications are simulated and fitted together (one batched call),
in this process or, for large sweeps on the CPU, in one worker process per core (``workers``);
after every batch the results file is rewritten atomically, so an interruption loses only the
batches in flight and a rerun into the same directory skips every finished fit."""
import csv
import json
import os
import traceback
import warnings
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ..errors import Interrupted, UserError
from ..settings.configs import register_resolvers
from ..estimation.device import keep_freed_memory, resolve_device, resolve_dtype
from ..estimation.convergence import ConvergenceWarning
from ..estimation.driver import FitOptions, fit_best_of, replication_groups
from .diagnostics import hellinger_to_truth, loglik_at_truth, moved_from_start
from ..estimation.init import starting_points
from ..estimation.params import ParamSpace
from .progress import WorkBar
from ..settings.setting import load_setting
from .simulate import data_seed, simulate
from .workers import run_batches

HEAD = ("setting", "n", "rep", "seed")
TAIL = ("mean_loglik", "loglik_truth", "moved", "hellinger", "n_iter", "converged", "status", "at_bound", "seconds")


def columns(setting) -> list:
    """results.csv's columns for ``setting``: the fit's key, the setting's own (its errors), the fit's record."""
    return [*HEAD, *setting.columns, *TAIL]


def config_number(value, key: str, kind=float, minimum=None):
    """A config value as int or float; UserError naming ``key`` if it is not one (or below minimum)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or float(value).is_integer())
    if not ok:
        what = "an integer" if kind is int else "a number"
        raise UserError(f"{key} must be {what}, got {value!r}; write {key}=<{what.split()[-1]}>")
    if minimum is not None and value < minimum:
        raise UserError(f"{key} must be at least {minimum}, got {value!r}")
    return kind(value)


def sample_sizes(sweep: DictConfig) -> list:
    """The sweep's sample sizes: ``sizes`` if given, else ``num_sizes`` log-spaced integers;
    at least two distinct sizes of at least 2 (a slope needs two)."""
    if sweep.get("sizes"):
        sizes = sorted({config_number(n, "sweep.sizes", int, 2) for n in sweep.sizes})
    else:
        lo, hi = config_number(sweep.n_min, "sweep.n_min", int, 2), config_number(sweep.n_max, "sweep.n_max", int, 2)
        num = config_number(sweep.num_sizes, "sweep.num_sizes", int, 1)
        if lo > hi:
            raise UserError(f"sweep.n_min={lo} is above sweep.n_max={hi}; swap them")
        sizes = sorted({int(round(n)) for n in np.logspace(np.log10(lo), np.log10(hi), num)})
    if len(sizes) < 2:
        raise UserError(f"the sweep has one sample size ({sizes[0]}) and a slope needs two; "
                        "set sweep.num_sizes=2 or more (with n_min < n_max) or sweep.sizes=[n1,n2,...]")
    return sizes


STRING_KEYS = ("fit.method", "fit.mstep", "fit.rule", "fit.accelerate", "fit.indefinite", "setting.fit.indefinite")


def _check_fit_values(node, key: str):
    """Every leaf of the fit config other than the named choices and switches must be a number,
    a list of numbers or null."""
    if isinstance(node, dict):
        for k, v in node.items():
            _check_fit_values(v, f"{key}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_fit_values(v, f"{key}[{i}]")
    elif node is not None and not isinstance(node, bool) and key not in STRING_KEYS:
        config_number(node, key, int if key.endswith(("max_iter", "max_ls", "squarem_after", "anderson_depth")) else float)


def fit_options(cfg: DictConfig, dtype) -> FitOptions:
    """FitOptions from the ``fit`` config group, with the options a setting needs (``setting.fit``,
    if it has any: its own parameter box, its Newton variant) replacing the group's (``bounds``
    entry by entry); float32 gets looser tolerances."""
    f = OmegaConf.to_container(cfg.fit, resolve=True)
    _check_fit_values(f, "fit")
    if cfg.setting.get("fit"):
        own = OmegaConf.to_container(cfg.setting.fit, resolve=True)
        _check_fit_values(own, "setting.fit")
        f.update({k: v for k, v in own.items() if k != "bounds"})
        if own.get("bounds"):
            f["bounds"] = {**(f.get("bounds") or {}), **own["bounds"]}
    if dtype == torch.float32:
        f["tol"], f["gtol"] = max(f.get("tol", 0), 1e-5), max(f.get("gtol", 0), 1e-5)
        inner = f.setdefault("inner", {})
        inner["ftol"], inner["gtol"] = max(inner.get("ftol", 0), 1e-7), max(inner.get("gtol", 0), 1e-5)
    try:
        return FitOptions(**f)
    except TypeError as err:  # an unknown key
        raise UserError(f"bad fit options: {err}; see conf/fit/*.yaml for the keys") from None


@dataclass
class Plan:
    """A sweep's validated configuration: everything a fit needs, checked before the first one."""

    setting: object  # a setting handle (settings.setting.load_setting)
    device: torch.device
    dtype: torch.dtype
    opts: FitOptions
    sizes: list
    reps: list
    model: torch.nn.Module
    hellinger_points: int
    workers: int | None  # None: auto (see worker_count)


def validate(cfg: DictConfig) -> Plan:
    """Check the whole sweep configuration (setting, device, dtype, fit, init, sweep, seed); a
    problem is a one-line UserError naming the key, raised before anything is fitted or written."""
    setting = load_setting(cfg.setting)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    opts = fit_options(cfg, dtype)
    config_number(cfg.seed, "seed", int)
    reps = list(range(config_number(cfg.sweep.reps, "sweep.reps", int, 1)))
    sizes = sample_sizes(cfg.sweep)
    if cfg.init.policy == "near_truth":
        config_number(cfg.init.scale, "init.scale", float, 0)
        config_number(cfg.init.get("power", 0.0), "init.power", float, 0)
        config_number(cfg.init.get("n_init", 1), "init.n_init", int, 1)
    elif cfg.init.policy == "random":
        config_number(cfg.init.n_init, "init.n_init", int, 1)
    else:
        raise UserError(f"unknown init.policy {cfg.init.policy!r} for a sweep; use init=near_truth or init=random")
    model = setting.model(dtype=dtype, device=device)
    ParamSpace(model, opts.bounds)  # bad bounds fail here, not at the first fit
    setting.truth(sizes[0])  # a setting without a truth fails here, in one line, not per batch
    points = config_number(cfg.get("hellinger_points", 0), "hellinger_points", int, 0)
    workers = cfg.get("workers", "auto")
    workers = None if workers == "auto" else config_number(workers, "workers", int, 1)
    return Plan(setting, device, dtype, opts, sizes, reps, model, points, workers)


AUTO_MIN_SAMPLES = 2_000_000  # workers=auto starts worker processes (a few seconds each) only for
# sweeps of at least this many samples (n summed over the fits to run): some seconds of fitting


def worker_count(plan: Plan, todo) -> int:
    """workers as given; for auto, on the CPU and for a sweep of at least AUTO_MIN_SAMPLES, as
    many as torch has threads (the CPUs this job may use: all cores, SLURM_CPUS_PER_TASK, or a
    joblib launcher's share), at most one per batch; else 1 (in this process)."""
    if plan.workers is not None:
        return plan.workers
    if plan.device.type != "cpu" or sum(n * len(reps) for n, reps in todo) < AUTO_MIN_SAMPLES:
        return 1
    return max(1, min(torch.get_num_threads(), len(todo)))


def sweep_starts(cfg, setting, model, n, reps, Y):
    """The init policy's starts {name: (R, ...)} for replications ``reps``; each replication's
    starts depend only on (seed, setting, n, rep, start). A near-truth start's noise has size
    init.scale * n^-init.power (power 0 unless given)."""
    policy = cfg.init.policy
    if policy == "near_truth":
        seed_of = lambda i, j: data_seed(cfg.seed + 1, setting.name if i == 0 else f"{setting.name}/near{i}", n, reps[j])  # noqa: E731
    else:
        seed_of = lambda i, j: data_seed(cfg.seed, f"{setting.name}/random{i}", n, reps[j])  # noqa: E731
    truth = setting.truth(n) if policy == "near_truth" else None
    scale = float(cfg.init.get("scale", 0.1)) * float(n) ** -float(cfg.init.get("power", 0.0))
    return starting_points(model, Y, policy, seed_of, truth=truth, scale=scale, n_init=int(cfg.init.get("n_init", 1)))


def _bool(text: str) -> bool:
    if text not in ("True", "False"):
        raise ValueError(f"expected True or False, got {text!r}")
    return text == "True"


TYPES = {"n": int, "rep": int, "seed": int, "mean_loglik": float, "loglik_truth": float, "moved": float,
         "hellinger": float, "n_iter": int, "converged": _bool, "seconds": float}  # and float for every err_ column


def typed_row(row: dict, where: str) -> dict:
    """A results.csv row of strings -> the same row with Python values (as ``_rows`` makes them)."""
    out = dict(row)
    types = {**TYPES, **{k: float for k in row if k.startswith("err_")}}
    for key, cast in types.items():
        try:
            out[key] = cast(row[key])
        except (TypeError, ValueError):
            raise UserError(f"{where}: bad {key} value {row[key]!r} (a damaged file?); "
                            "delete that line (its fit is redone) or move the file away") from None
    return out


@dataclass
class Results:
    """The rows of results.csv, keyed by (setting, n, rep, seed); values typed as ``typed_row`` does."""

    path: Path
    rows: list
    columns: list

    @classmethod
    def load(cls, path, columns: list):
        """Read results.csv (if any) of the given ``columns`` (``columns(setting)``), typing every
        row once; a damaged file is a UserError."""
        path = Path(path)
        rows = []
        if path.exists():
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames is not None and reader.fieldnames != list(columns):
                    raise UserError(f"{path} has columns {','.join(reader.fieldnames)}, expected {','.join(columns)}; "
                                    "move it away (it is not this version's results file, or another setting's)")
                rows = [typed_row(r, f"{path} line {reader.line_num}") for r in reader]
        return cls(path, rows, list(columns))

    def done(self, setting: str, seed: int) -> set:
        """(n, rep) of finished fits; a batch that raised ('error: ...') is not finished."""
        return {(r["n"], r["rep"]) for r in self.rows
                if r["setting"] == setting and r["seed"] == seed and not r["status"].startswith("error")}

    def add(self, new_rows):
        """Add rows (replacing earlier rows of the same fits) and rewrite the file atomically
        (write a temporary file, then rename), so a crash keeps the old file or the new one."""
        key = lambda r: (r["setting"], r["n"], r["rep"], r["seed"])  # noqa: E731
        fresh = {key(r) for r in new_rows}
        rows = [r for r in self.rows if key(r) not in fresh] + list(new_rows)
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self.rows = rows  # only once on disk, so an interrupt never counts rows the file lacks


def _rows(setting, n, reps, seed, result, errors, diagnostics):
    share = result.seconds / len(reps)
    return [
        {
            "setting": setting.name, "n": n, "rep": rep, "seed": seed,
            **{k: v[j] if isinstance(v[j], str) else float(v[j]) for k, v in errors.items()},
            "mean_loglik": float(result.mean_loglik[j]), **{k: float(v[j]) for k, v in diagnostics.items()},
            "n_iter": int(result.n_iter[j]),
            "converged": bool(result.converged[j]), "status": result.status[j],
            "at_bound": " ".join(result.at_bound[j]), "seconds": share,
        }
        for j, rep in enumerate(reps)
    ]


def _failed_rows(setting, n, reps, seed, reason):
    nan = float("nan")
    return [
        {"setting": setting.name, "n": n, "rep": rep, "seed": seed, **{c: nan if c.startswith("err_") else "" for c in setting.columns},
         "mean_loglik": nan, "loglik_truth": nan, "moved": nan, "hellinger": nan, "n_iter": 0, "converged": False, "status": f"error: {reason}", "at_bound": "", "seconds": 0.0}
        for rep in reps
    ]


FINGERPRINT_KEYS = ("setting", "fit", "init", "device", "dtype")


def fingerprint(cfg: DictConfig, plan: Plan) -> dict:
    """What makes results comparable: setting, fit, init and the resolved device type and dtype."""
    mine = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("setting", "fit", "init")}
    mine.update(device=plan.device.type, dtype=str(plan.dtype).removeprefix("torch."))
    return json.loads(json.dumps(mine))


def _check_fingerprint(cfg: DictConfig, plan: Plan, out_dir: Path):
    """Refuse to resume into a directory whose results came from another configuration; the
    first run writes fingerprint.json (atomically)."""
    mine = fingerprint(cfg, plan)
    path = out_dir / "fingerprint.json"
    if path.exists():
        try:
            theirs = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{path} is not valid JSON (an interrupted write?); delete it if results.csv "
                            "came from this same command") from None
        changed = [k for k in FINGERPRINT_KEYS if k in theirs and theirs[k] != mine[k]]
        if changed:
            raise UserError(f"{out_dir} holds results of another configuration (different {', '.join(changed)}); "
                            "choose another directory with hydra.run.dir=...")
    else:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(mine, indent=2))
        os.replace(tmp, path)


def _fit_batch(cfg, plan: Plan, n: int, reps: list):
    """Simulate and fit replications ``reps`` at size n -> (rows, FitResult or None)."""
    setting, seed = plan.setting, int(cfg.seed)
    try:
        X, Y = simulate(setting, n, reps, seed, dtype=plan.dtype, device=plan.device)
        starts = sweep_starts(cfg, setting, plan.model, n, reps, Y)
        with warnings.catch_warnings():  # unconverged fits are counted in the report instead
            warnings.simplefilter("ignore", ConvergenceWarning)
            result = fit_best_of(plan.model, X, Y, starts, plan.opts)
        truth = setting.true_model(n)
        diagnostics = {"loglik_truth": loglik_at_truth(truth, X, Y), "moved": moved_from_start(starts, result.params),
                       "hellinger": hellinger_to_truth(truth, setting, plan.model, result.params, plan.hellinger_points)}
        errors = setting.errors(result.params, n)
        return _rows(setting, n, reps, seed, result, errors, diagnostics), result
    except (RuntimeError, ValueError, torch.cuda.OutOfMemoryError) as err:
        tqdm.write(f"fits at n={n} failed: {err.__class__.__name__}: {err}")
        traceback.print_exc()
        return _failed_rows(setting, n, reps, seed, f"{err.__class__.__name__}: {err}"), None


BATCH_SAMPLES = 20_000_000  # samples (R * n) simulated and held at once at most (a batch's data:
# 1.4 GB at d = 8 in float64), so that 40 replications at n = 1e7 do not need 26 GB


def split_for_workers(todo, workers: int) -> list:
    """Each (n, reps) of todo cut into consecutive parts along the groups that fit_batch fits as
    one (so every fit is computed exactly as in one batch): into ``workers`` parts, for the
    workers to share a sample size instead of waiting for the largest ones one by one, and into
    more where a part would hold over BATCH_SAMPLES samples."""
    parts = []
    for n, reps in todo:
        groups = replication_groups(len(reps), n)
        count = max(workers, -(-n * len(reps) // BATCH_SAMPLES))
        cuts = np.linspace(0, len(groups), min(count, len(groups)) + 1).round().astype(int)
        parts += [(n, reps[groups[a].start:groups[b - 1].stop]) for a, b in zip(cuts[:-1], cuts[1:])]
    return parts


def batch_plan(plan: Plan, todo) -> tuple:
    """(workers, batches): the worker processes the sweep of ``todo`` [(n, reps)] uses and its
    batches [(n, reps)] in the order they run."""
    workers = worker_count(plan, todo)
    return workers, split_for_workers(todo, workers)


_WORKER = {}  # in a worker process: the sweep's config and plan, set once by _worker_init


def _worker_init(cfg: DictConfig):
    register_resolvers()
    keep_freed_memory()
    _WORKER.update(cfg=cfg, plan=validate(cfg))


def _worker_batch(n: int, reps: list):
    return _fit_batch(_WORKER["cfg"], _WORKER["plan"], n, reps)


def run_study(cfg: DictConfig, out_dir, monitor=None, progress=None) -> Results:
    """Run (or resume) the sweep of ``cfg`` into out_dir/results.csv; returns all rows.
    ``progress(n, reps, seconds)`` is called before each batch (seconds=None) and after it;
    without one, a WorkBar is shown when cfg.progress. Ctrl-C raises ``Interrupted``."""
    plan = validate(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_fingerprint(cfg, plan, out_dir)
    results = Results.load(out_dir / "results.csv", columns(plan.setting))
    name, seed = plan.setting.name, int(cfg.seed)
    done = results.done(name, seed)
    todo = [(n, [r for r in plan.reps if (n, r) not in done]) for n in plan.sizes]
    todo = [(n, reps) for n, reps in todo if reps]
    n_todo = sum(len(r) for _, r in todo)
    workers, todo = batch_plan(plan, todo)
    where = f" in {workers} worker processes" if workers > 1 else ""
    print(f"{name}: {n_todo} fits to run{where}, {len(plan.sizes) * len(plan.reps) - n_todo} already done in {out_dir}")
    bar = None
    if progress is None:
        progress = bar = WorkBar([(n, len(reps)) for n, reps in todo], f"{name}", disable=not cfg.progress, workers=workers)
    local = lambda n, reps: _fit_batch(cfg, plan, n, reps)  # noqa: E731
    batches = run_batches(_worker_batch if workers > 1 else local, todo, workers, lambda n, reps: progress(n, reps, None),
                          init=_worker_init, init_args=(cfg,))
    try:
        with closing(batches):
            for n, reps, (rows, result), seconds in batches:
                results.add(rows)
                progress(n, reps, seconds)
                if monitor is not None:
                    monitor.log_batch(n, reps, rows, result, seconds)
                    monitor.log_progress(n, results.rows, plan.setting, seed)
    except KeyboardInterrupt:
        kept = len(results.done(name, seed))
        raise Interrupted(f"kept {kept} finished fits in {results.path}; run the same command again to resume") from None
    except BrokenProcessPool:
        kept = len(results.done(name, seed))
        raise UserError(f"a worker process died (out of memory?); kept {kept} finished fits in {results.path}; "
                        "run the same command again with workers=1 to resume in one process") from None
    finally:
        if bar is not None:
            bar.close()
    return results
