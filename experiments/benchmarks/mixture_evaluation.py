"""Time one evaluation of the fused mixture objective (value, gradient, Hessian) of the sibling
study's over-specified fits, eagerly and compiled, on one thread: the cost that a K >= 2 Newton fit
pays once per iteration (its Hessian) or per trial step (its value). Compiled, a Hessian reads the
posterior and gate weights of the last value where that was at the same point, as in a fit (a trial
is valued first): ``hessian`` is timed so, after a value at that point; ``hessian_alone`` with no
value kept (the value's pass and the derivatives' pass; eagerly the same as ``hessian``).

    python experiments/benchmarks/mixture_evaluation.py --components 3 4 --sizes 10000 100000 \
        --out experiments/benchmarks/mixture_evaluation.json

The data are the sibling setting's (replication 0 at each size, ``--reps`` data sets side by side in
one evaluation), evaluated at the study's first near-truth start; medians over ``--rounds`` rounds in
which the orders and modes take turns (so that a busy moment of the shared machine hits all alike)."""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import softmoe_torch
from softmoe_torch.estimation.device import keep_freed_memory
from softmoe_torch.estimation.inputs import as_batch
from softmoe_torch.estimation.objective import make_objective
from softmoe_torch.estimation.params import ParamSpace
from softmoe_torch.settings.configs import register_resolvers
from softmoe_torch.study.simulate import simulate
from softmoe_torch.study.sweep import sweep_starts, validate

CONF = Path(softmoe_torch.__file__).resolve().parents[1] / "conf"
ORDERS = {0: "value", 1: "gradient", 2: "hessian", 3: "hessian_alone"}  # 3: a Hessian with no value kept


def problem(K: int, n: int, reps: int):
    """(objective factory compile -> objective, u (reps, p)) at the study's first start."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(
            "config",
            overrides=[
                "setting=softmax_gaussian_moe",
                "fit=newton",
                "init=near_truth_shrinking",
                f"setting.n_components={K}",
                "sweep=sibling_over",
                "init.n_init=5",
            ],
        )
    plan = validate(cfg)
    X, Y = simulate(plan.setting, n, list(range(reps)), int(cfg.seed), dtype=plan.dtype, device=plan.device)
    start = sweep_starts(cfg, plan.setting, plan.model, n, list(range(reps)), Y)[0]
    X, Y = as_batch(X, Y)
    space = ParamSpace(plan.model, plan.opts.bounds)
    u = space.to_unconstrained({k: v.to(X) for k, v in start.items()})
    return (lambda compiled: make_objective(plan.model, X, Y, space, compiled)), u


def time_one(objective, u, order: int) -> float:
    """Seconds of one evaluation of ``order`` (3: a Hessian, with the compiled value kept before forgotten)."""
    idx = torch.arange(u.shape[0])
    if order == 3:
        getattr(objective, "_values", {}).clear()
    start = time.perf_counter()
    objective.evaluate(u, idx, min(order, 2))
    return time.perf_counter() - start


def measure(K: int, n: int, reps: int, rounds: int, modes: list) -> dict:
    make, u = problem(K, n, reps)
    objectives = {mode: make(mode == "compiled") for mode in modes}
    for obj in objectives.values():  # compile and warm up
        for order in ORDERS:
            for _ in range(3):
                time_one(obj, u, order)
    times = {(mode, order): [] for mode in modes for order in ORDERS}
    for _ in range(rounds):
        for mode, obj in objectives.items():
            for order in ORDERS:
                times[mode, order].append(time_one(obj, u, order))
    return {mode: {ORDERS[o]: round(1e3 * statistics.median(times[mode, o]), 3) for o in ORDERS} for mode in modes}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--components", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--reps", type=int, default=1, help="data sets evaluated side by side")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    register_resolvers()
    keep_freed_memory()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    rows = []
    for K in args.components:
        for n in args.sizes:
            ms = measure(K, n, args.reps, args.rounds, args.modes)
            rows.append({"K": K, "n": n, "reps": args.reps, "ms": ms})
            print(f"K={K} n={n} reps={args.reps}: " + "; ".join(f"{m} {v}" for m, v in ms.items()), flush=True)
    out = {
        "what": "median ms per evaluation of the fused mixture objective, one thread",
        "package": str(Path(softmoe_torch.__file__).resolve().parent),
        "torch": torch.__version__,
        "load_average": [load_before, os.getloadavg()[0]],
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
