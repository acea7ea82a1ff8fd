"""A sweep over sample sizes x replications -> results.csv, one row per fit; resumable.

Each sample size's missing replications are simulated and fitted together (one batched call),
in this process or, for large sweeps on the CPU, in one worker process per core (``workers``);
after every batch the results file is rewritten atomically, so an interruption loses only the
batches in flight and a rerun into the same directory skips every finished fit."""

import traceback
import warnings
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from ..errors import Interrupted, UserError
from ..estimation.convergence import ConvergenceWarning
from ..estimation.device import keep_freed_memory
from ..estimation.driver import fit_best_of, group_samples, precompile, replication_groups
from ..estimation.init import starting_points
from ..estimation.ls_driver import fit_least_squares
from ..model.regression import RegressionMoE
from ..settings.configs import register_resolvers

# config_number, fit_options, sample_sizes, fingerprint and typed_row are imported only to stay importable from
# here for one release (they moved to config_checks.py, store.py and settings/configs.py)
from .config_checks import Plan, config_number, fit_options, init_options, sample_sizes, validate  # noqa: F401
from .diagnostics import hellinger_to_truth, loglik_at_truth, moved_from_start
from .progress import WorkBar
from .simulate import data_seed, simulate
from .store import Results, check_fingerprint, columns, failed_rows, fingerprint, fit_rows, typed_row  # noqa: F401
from .workers import run_batches, worker_index

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
    init.scale * n^-init.power (power 0 unless given); a setting with its own near-truth protocol
    (``starting_points``, e.g. a regression setting's) gives its starts itself."""
    init = init_options(cfg)
    policy = init["policy"]
    if policy == "near_truth":

        def seed_of(i, j):
            return data_seed(cfg.seed + 1, setting.name if i == 0 else f"{setting.name}/near{i}", n, reps[j])
    else:

        def seed_of(i, j):
            return data_seed(cfg.seed, f"{setting.name}/random{i}", n, reps[j])

    own = getattr(setting, "starting_points", None)
    if own is not None and policy == "near_truth":
        return own(init, n, reps, seed_of)
    truth = setting.truth(n) if policy == "near_truth" else None
    scale = float(init.get("scale", 0.1)) * float(n) ** -float(init.get("power", 0.0))
    return starting_points(model, Y, policy, seed_of, truth=truth, scale=scale, n_init=int(init.get("n_init", 1)))


def fit_starts(model, X, Y, starts: list, opts, seeds: list):
    """The best fit of each data set from ``starts``: least squares for a regression mixture
    (``seeds`` (R,) its SGD shuffles' seeds), maximum likelihood for a mixture density."""
    if isinstance(model, RegressionMoE):
        return fit_least_squares(model, X, Y, starts, opts, seeds)
    return fit_best_of(model, X, Y, starts, opts)


def _fit_batch(cfg, plan: Plan, n: int, reps: list):
    """Simulate and fit replications ``reps`` at size n -> (rows, FitResult or None)."""
    setting, seed = plan.setting, int(cfg.seed)
    try:
        X, Y = simulate(setting, n, reps, seed, dtype=plan.dtype, device=plan.device)
        starts = sweep_starts(cfg, setting, plan.model, n, reps, Y)
        with warnings.catch_warnings():  # unconverged fits are counted in the report instead
            warnings.simplefilter("ignore", ConvergenceWarning)
            seeds = [data_seed(seed + 2, setting.name, n, rep) for rep in reps]
            result = fit_starts(plan.model, X, Y, starts, plan.opts, seeds)
        truth = setting.true_model(n)
        diagnostics = {
            "loglik_truth": loglik_at_truth(truth, X, Y),
            "moved": moved_from_start(starts, result.params),
            "hellinger": hellinger_to_truth(truth, setting, plan.model, result.params, plan.hellinger_points),
        }
        errors = setting.errors(result.params, n)
        return fit_rows(setting, n, reps, seed, result, errors, diagnostics), result
    except (RuntimeError, ValueError, torch.cuda.OutOfMemoryError) as err:
        tqdm.write(f"fits at n={n} failed: {err.__class__.__name__}: {err}")
        traceback.print_exc()
        return failed_rows(setting, n, reps, seed, f"{err.__class__.__name__}: {err}"), None


BATCH_SAMPLES = 20_000_000  # samples (R * n) simulated and held at once at most (a batch's data:
# 1.4 GB at d = 8 in float64), so that 40 replications at n = 1e7 do not need 26 GB


def split_for_workers(todo, workers: int, samples: int | None = None) -> list:
    """Each (n, reps) of todo cut into consecutive parts along the groups that fit_batch fits as
    one (of ``samples`` at most, see ``replication_groups``; so every fit is computed exactly as in
    one batch): into ``workers`` parts, for the workers to share a sample size instead of waiting
    for the largest ones one by one, and into more where a part would hold over BATCH_SAMPLES samples."""
    parts = []
    for n, reps in todo:
        groups = replication_groups(len(reps), n, samples)
        count = max(workers, -(-n * len(reps) // BATCH_SAMPLES))
        cuts = np.linspace(0, len(groups), min(count, len(groups)) + 1).round().astype(int)
        parts += [(n, reps[groups[a].start : groups[b - 1].stop]) for a, b in zip(cuts[:-1], cuts[1:])]
    return parts


def batch_plan(plan: Plan, todo) -> tuple:
    """(workers, batches): the worker processes the sweep of ``todo`` [(n, reps)] uses and its
    batches [(n, reps)] in the order they run."""
    workers = worker_count(plan, todo)
    return workers, split_for_workers(todo, workers, group_samples(plan.model, plan.opts))


_WORKER = {}  # in a worker process: the sweep's config and plan, set once by _worker_init


PRECOMPILE_SAMPLES = 64  # samples of the two data sets on which a worker makes its compiled graphs


def _worker_init(cfg: DictConfig):
    """A worker's set-up: the sweep's plan, and its compiled graphs made before the first batch, the
    odd workers starting with those for a batch of one problem (``driver.precompile``): so two
    workers compile different graphs and find the other's in inductor's disk cache."""
    register_resolvers()
    keep_freed_memory()
    plan = validate(cfg)
    _WORKER.update(cfg=cfg, plan=plan)

    def data():
        return simulate(plan.setting, PRECOMPILE_SAMPLES, [0, 1], int(cfg.seed), dtype=plan.dtype, device=plan.device)

    precompile(plan.model, data, plan.opts, singles_first=worker_index() % 2 == 1)


def _worker_batch(n: int, reps: list):
    return _fit_batch(_WORKER["cfg"], _WORKER["plan"], n, reps)


def run_study(cfg: DictConfig, out_dir, monitor=None, progress=None) -> Results:
    """Run (or resume) the sweep of ``cfg`` into out_dir/results.csv; returns all rows.
    ``progress(n, reps, seconds)`` is called before each batch (seconds=None) and after it;
    without one, a WorkBar is shown when cfg.progress. Ctrl-C raises ``Interrupted``."""
    plan = validate(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_fingerprint(cfg, plan, out_dir)
    results = Results.load(out_dir / "results.csv", columns(plan.setting))
    name, seed = plan.setting.name, int(cfg.seed)
    done = results.done(name, seed)
    todo = [(n, [r for r in plan.reps if (n, r) not in done]) for n in plan.sizes]
    todo = [(n, reps) for n, reps in todo if reps]
    n_todo = sum(len(r) for _, r in todo)
    workers, todo = batch_plan(plan, todo)
    where = f" in {workers} worker processes" if workers > 1 else ""
    print(f"{name}: {n_todo} fits to run{where}, {len(plan.sizes) * len(plan.reps) - n_todo} already done in {out_dir}")
    prepare = getattr(plan.setting, "prepare", None)  # once, before the workers (e.g. a best fit, cached on disk)
    if todo and prepare is not None:
        prepare()
    bar = None
    if progress is None:
        progress = bar = WorkBar(
            [(n, len(reps)) for n, reps in todo], f"{name}", disable=not cfg.progress, workers=workers
        )
    local = lambda n, reps: _fit_batch(cfg, plan, n, reps)  # noqa: E731
    batches = run_batches(
        _worker_batch if workers > 1 else local,
        todo,
        workers,
        lambda n, reps: progress(n, reps, None),
        init=_worker_init,
        init_args=(cfg,),
    )
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
        raise Interrupted(
            f"kept {kept} finished fits in {results.path}; run the same command again to resume"
        ) from None
    except BrokenProcessPool:
        kept = len(results.done(name, seed))
        raise UserError(
            f"a worker process died (out of memory?); kept {kept} finished fits in {results.path}; "
            "run the same command again with workers=1 to resume in one process"
        ) from None
    finally:
        if bar is not None:
            bar.close()
    return results
