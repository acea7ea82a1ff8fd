"""One fit of the sibling study's true model (softmax-gated Gaussian MoE, K = 2, d = 1) by R's
flexmix and by softmoe_torch, on the same data and from the same start, timed in the same run.

The start is the true model for both: flexmix gets its posterior probabilities at the data (its
first EM step is the M-step from them), softmoe_torch its parameters (EM's first E-step computes
exactly those posteriors; Newton starts there). Times are of the fit call alone (flexmix's
``system.time`` inside R; ours ``FitResults.seconds``), each repeated; R's start-up and file
reading are not counted, nor Python's; the allocator is set as the command-line entries set it. Needs Rscript with flexmix (Debian: r-base-core r-cran-flexmix).

    python experiments/sibling/moe_flexmix_benchmark.py [--sizes 10000 100000] [--repeats 5] [--threads 1]
    python experiments/sibling/moe_flexmix_benchmark.py --write-data DIR --sizes 100000   # the files, for whole-process timing
    python experiments/sibling/moe_flexmix_benchmark.py --ours DIR/d100000.csv               # one fit of ours, from the truth
    python experiments/sibling/moe_flexmix_benchmark.py --random-starts --sizes 100000      # each side's own 5 random starts

Writes experiments/sibling/flexmix_benchmark.json and .md; with --random-starts, no start is
shared: the ``fit`` command (fit=newton, its default 5 random starts; the JSON's ``seconds``)
against flexmix's ``stepFlexmix(nrep = 5)`` (timed around the call in R), written to
flexmix_random_starts.json and .md."""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# experiments/ on sys.path for the helpers every study shares (experiments/studykit.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import studykit  # noqa: E402

from softmoe_torch import AffineExpert, Component, Estimator, Gaussian, MixtureOfExperts, SoftmaxGate  # noqa: E402
from softmoe_torch.estimation.device import keep_freed_memory  # noqa: E402

OUT = Path(__file__).resolve().parent  # experiments/sibling/
SCRIPT = studykit.ROOT / "experiments" / "flexmix" / "fit_moe.R"  # shared with tests/test_flexmix.py
BOUNDS = {"real": 100.0, "positive": [1e-6, 1e3]}  # setting=softmax_gaussian_moe's box


def truth() -> MixtureOfExperts:
    """The sibling study's true model: component 0 (the gate's reference) -5 + 20 x, variance 0.16;
    component 1 15 - 20 x, variance 0.09, gate logit -8 + 25 x."""
    comps = [
        Component(AffineExpert(1, eta=[20.0], bias=-5.0), Gaussian(), nu=0.16),
        Component(AffineExpert(1, eta=[-20.0], bias=15.0), Gaussian(), nu=0.09),
    ]
    return MixtureOfExperts(comps, SoftmaxGate(1, 1, beta=[[25.0]], tau=[-8.0])).double()


def data(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 1, generator=gen, dtype=torch.float64)
    return X, truth().sample(X, generator=gen)


def write_files(directory: Path, n: int):
    """d<n>.csv (x1,y) and post<n>.csv (the true model's posteriors, flexmix's start)."""
    X, y = data(n)
    with torch.no_grad():
        post = truth().responsibilities(X, y).numpy()
    directory.mkdir(parents=True, exist_ok=True)
    np.savetxt(
        directory / f"d{n}.csv",
        np.column_stack([X.numpy(), y.numpy()]),
        delimiter=",",
        header="x1,y",
        comments="",
        fmt="%.17g",
    )
    np.savetxt(directory / f"post{n}.csv", post, delimiter=",", fmt="%.17g")
    return directory / f"d{n}.csv", directory / f"post{n}.csv"


def fit_ours(X, y, method: str):
    start = {k: v.detach() for k, v in truth().trainable_parameters().items()}
    return Estimator(truth(), method, bounds=BOUNDS).fit(X, y, start=start)


def flexmix(data_csv: Path, post_csv, tol: float) -> dict:
    """One flexmix fit: from the posteriors in ``post_csv``, or 'random:K:NREP' (stepFlexmix)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.txt"
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["Rscript", str(SCRIPT), str(data_csv), str(post_csv), str(out), repr(tol)], capture_output=True, text=True
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(
                f"error: flexmix failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
            )
        values = {k: float(v) for k, v in (line.split() for line in out.read_text().splitlines())}
    return {
        "seconds": values["seconds"],
        "process_seconds": wall,
        "loglik": values["loglik"],
        "iterations": int(values["iter"]),
    }


def fit_command(data_csv: Path, threads: int, extra=()) -> dict:
    """``python -m softmoe_torch.fit`` on the file (fit=newton, its default random starts, more
    overrides ``extra``): its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fit.json"
        cmd = [sys.executable, "-m", "softmoe_torch.fit", f"data={data_csv}", "setting=softmax_gaussian_moe"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run([*cmd, "fit=newton", *extra, f"out={out}"], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"error: the fit command failed: {proc.stderr.strip().splitlines()[-1]}")
        return json.loads(out.read_text())


def fit_command_compiled(data_csv: Path, repeats: int) -> list:
    """The ``fit`` command's own code (``softmoe_torch.fit.fit_file``, fit=newton, fit.compile=true)
    called 1 + ``repeats`` times in one process, as a sweep's fits are: [the first call (it pays the
    compilation), then each later call], their JSONs."""
    from hydra import compose, initialize_config_dir

    from softmoe_torch.fit import fit_file
    from softmoe_torch.settings.configs import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(studykit.ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "fit_data", [f"data={data_csv}", "setting=softmax_gaussian_moe", "fit=newton", "fit.compile=true"]
        )
    with tempfile.TemporaryDirectory() as tmp:
        return [
            {k: v for k, v in fit_file(cfg.copy(), Path(tmp) / "fit.json").items() if k != "results"}
            for _ in range(1 + repeats)
        ]


def random_starts(args):
    """Each side's own 5 random starts on the same data: flexmix_random_starts.json and .md."""
    out = {"load_average_before": studykit.load_average(), "threads": args.threads, "flexmix_tol": args.tol}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            data_csv, _ = write_files(Path(tmp), n)
            flex = [flexmix(data_csv, "random:2:5", args.tol) for _ in range(args.repeats)]
            ours = [fit_command(data_csv, args.threads) for _ in range(args.repeats)]
            whole = [fit_command(data_csv, args.threads, ["init.subsample=null"]) for _ in range(args.repeats)]
            first, *compiled = fit_command_compiled(data_csv, args.repeats)
            mine = lambda runs: [  # noqa: E731
                {"seconds": r["seconds"], "loglik": r["mean_loglik"] * n, "status": r["status"]} for r in runs
            ]
            rows[str(n)] = {
                "flexmix": flex,
                "ours": mine(ours),
                "ours, init.subsample=null (every start on all the data)": mine(whole),
                "ours, fit.compile=true, first call": mine([first]),
                "ours, fit.compile=true, later calls": mine(compiled),
            }
            print(n, {k: round(float(np.median([r["seconds"] for r in v])), 3) for k, v in rows[str(n)].items()})
    out["sizes"], out["load_average_after"] = rows, studykit.load_average()
    (OUT / "flexmix_random_starts.json").write_text(json.dumps(out, indent=1))
    lines = [
        "# The sibling model's K = 2 fit from each side's own 5 random starts: flexmix against softmoe_torch",
        "",
        f"Fit call alone (flexmix: `stepFlexmix(nrep = 5)` timed in R, tolerance {args.tol:g}; ours: the `fit` "
        f"command's `seconds`, fit=newton, 5 random starts, each first fitted on 10 000 samples drawn at random "
        f"(its default init.subsample), then on all), median [min, max] over {args.repeats} runs; torch "
        f"threads {args.threads}; load average {out['load_average_before']} before, {out['load_average_after']} after. "
        "`fit.compile=true`: the same command's code called in one process (as a sweep's fits are), the first "
        "call paying the compilation (inductor's disk cache as this machine had it), then the later calls.",
        "",
        "| n | who | seconds | best log-likelihood | speed-up over flexmix |",
        "|---|---|---|---|---|",
    ]
    for n, row in rows.items():
        base = float(np.median([r["seconds"] for r in row["flexmix"]]))
        for who, runs in row.items():
            sec = [r["seconds"] for r in runs]
            best = max(r["loglik"] for r in runs)
            lines.append(
                f"| {n} | {who} | {np.median(sec):.3f} [{min(sec):.3f}, {max(sec):.3f}] | {best:.4f} | "
                f"{base / np.median(sec):.1f}x |"
            )
    (OUT / "flexmix_random_starts.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for our fits")
    parser.add_argument(
        "--tol", type=float, default=1e-10, help="flexmix's EM tolerance (relative log-likelihood change)"
    )
    parser.add_argument("--methods", nargs="+", default=["newton", "em"])
    parser.add_argument("--write-data", type=Path, help="only write the data and start files into this folder")
    parser.add_argument("--ours", type=Path, help="only fit this CSV by newton from the truth (whole-process timing)")
    parser.add_argument("--random-starts", action="store_true", help="each side's own 5 random starts, no shared start")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the command-line entries do
    if args.write_data:
        for n in args.sizes:
            print(*write_files(args.write_data, n))
        return
    if args.random_starts:
        random_starts(args)
        return
    if args.ours:
        table = np.loadtxt(args.ours, delimiter=",", skiprows=1)
        res = fit_ours(torch.as_tensor(table[:, :1]), torch.as_tensor(table[:, 1]), "newton")
        print(f"loglik {float(res.loglik[0]):.10f} seconds {res.seconds:.4f} status {res.status[0]}")
        return
    out = {
        "load_average_before": studykit.load_average(),
        "threads": args.threads,
        "flexmix_tol": args.tol,
        "sizes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            X, y = data(n)
            files = write_files(Path(tmp), n)
            row = {"flexmix": [flexmix(*files, args.tol) for _ in range(args.repeats)]}
            for method in args.methods:
                fits = [fit_ours(X, y, method) for _ in range(args.repeats)]
                row[method] = [
                    {
                        "seconds": r.seconds,
                        "loglik": float(r.loglik[0]),
                        "iterations": int(r.n_iter[0]),
                        "status": r.status[0],
                    }
                    for r in fits
                ]
            out["sizes"][str(n)] = row
            print(n, {k: round(float(np.median([r["seconds"] for r in v])), 4) for k, v in row.items()}, flush=True)
    out["load_average_after"] = studykit.load_average()
    OUT.mkdir(exist_ok=True)
    (OUT / "flexmix_benchmark.json").write_text(json.dumps(out, indent=1))
    lines = [
        "# One K = 2 fit of the sibling model: flexmix against softmoe_torch (same data, same start)",
        "",
        f"Fit call alone, median [min, max] over {args.repeats} runs; torch threads {args.threads}; load average "
        f"{out['load_average_before']} before, {out['load_average_after']} after.",
        "",
        "| n | method | seconds | iterations | log-likelihood | speed-up over flexmix |",
        "|---|---|---|---|---|---|",
    ]
    for n, row in out["sizes"].items():
        base = float(np.median([r["seconds"] for r in row["flexmix"]]))
        for method, runs in row.items():
            s = [r["seconds"] for r in runs]
            lines.append(
                f"| {n} | {method} | {np.median(s):.4f} [{min(s):.4f}, {max(s):.4f}] | {runs[0]['iterations']} | "
                f"{runs[0]['loglik']:.6f} | {base / np.median(s):.1f}x |"
            )
    (OUT / "flexmix_benchmark.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
