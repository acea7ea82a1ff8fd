"""One least-squares fit of a K = 9, d = 32 regression mixture of experts (the sigmoid-gating study's
size, p = 594 under a sigmoid gate) by the package against what a user would write by hand, from the
same start, each peer timed to the project's final RSS (relative 1e-8):

- ``torch.optim.LBFGS`` (float64, history 20, strong Wolfe, no stop on small changes) on the same mean squared residual through
  the model's forward and autograd, at ``--n``;
- ``scipy.optimize.least_squares`` ('trf', the exact Jacobian formed from the package's structured
  per-sample coefficients: the fastest exact Jacobian we know, a gift to the peer) at ``--scipy-n``
  (at 1e5 its Jacobian alone is ~0.5 GB), against the package's fit of the same data.

A peer is stopped when it reaches the target RSS or after ``--cap`` seconds; every evaluation's time
and RSS is recorded, so a peer that ends elsewhere (another stationary point, or lower) shows as such.

    python experiments/benchmarks/least_squares.py --n 100000 --scipy-n 10000 --expert relu --out ls.json
"""

import argparse
import json
import os
import time

import numpy as np
import scipy.optimize
import torch

from softmoe_torch import Estimator
from softmoe_torch.estimation.ls_objective import GenericLS, StructuredLS
from softmoe_torch.settings.regression_truths import draw_truth, near_truth_start, regression_model, separation


class Reached(Exception):
    """A peer reached the target RSS (or its time cap)."""


class Recorder:
    """Wraps a peer's objective: records (seconds since start, RSS / n) per evaluation; raises
    ``Reached`` at the target or the cap."""

    def __init__(self, target: float, cap: float):
        self.target, self.cap, self.rows, self.start = target, cap, [], time.perf_counter()

    def __call__(self, F: float):
        elapsed = time.perf_counter() - self.start
        self.rows.append((elapsed, F))
        if F <= self.target or elapsed > self.cap:
            raise Reached

    def summary(self) -> dict:
        hit = next((t for t, F in self.rows if F <= self.target), None)
        best = min(F for _, F in self.rows)
        return dict(seconds_to_target=hit, evaluations=len(self.rows), best_rss=best, seconds=self.rows[-1][0])


def ours(model, X, y, start, method, max_iter):
    t = time.perf_counter()
    res = Estimator(model, method, max_iter=max_iter).fit(X, y, start=start)
    seconds = time.perf_counter() - t
    return res, dict(
        seconds=seconds,
        rss=float(res.noise_variance[0]),
        status=res.status[0],
        n_iter=int(res.n_iter[0]),
        gradient_max=float(res.gradient_max()[0]),
    )


def torch_lbfgs(model, X, y, start, target, cap):
    obj = GenericLS(model, X[None], y[None])
    u = obj.pack({k: v[None] for k, v in start.items()})[0].clone().requires_grad_(True)
    fitted = obj.fitted(X[None])
    opt = torch.optim.LBFGS(
        [u],
        lr=1,
        max_iter=1_000_000,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-8,
        tolerance_change=0.0,  # on to the target, a gradient of 1e-8, a failed line search or the cap
    )
    rec = Recorder(target, cap)

    def closure():
        opt.zero_grad()
        loss = ((y - fitted(u[None])[0]) ** 2).mean()
        loss.backward()
        rec(float(loss.detach()))
        return loss

    try:
        opt.step(closure)
    except Reached:
        pass
    return rec.summary()


def scipy_trf(model, X, y, start, target, cap):
    obj = StructuredLS(model, X[None], y[None])
    u0 = obj.pack({k: v[None] for k, v in start.items()})[0]
    rec = Recorder(target, cap)

    def residuals(u):
        f, _ = obj.forward(torch.as_tensor(u)[None], obj.Z)
        r = (y - f[0]).numpy()
        rec(float(np.mean(r * r)))
        return r

    def jac(u):  # d r / d u = -C_c(x) z per channel c: (n, channels, d + 1) -> (n, p)
        _, C = obj.forward(torch.as_tensor(u)[None], obj.Z)
        return -(C[0].unsqueeze(-1) * obj.Z[0].unsqueeze(1)).flatten(1).numpy()

    try:
        scipy.optimize.least_squares(residuals, u0.numpy(), jac=jac, method="trf", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    except Reached:
        pass
    return rec.summary()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--scipy-n", type=int, default=10_000)
    ap.add_argument("--expert", choices=["relu", "linear"], default="relu")
    ap.add_argument("--gate", choices=["sigmoid", "softmax"], default="sigmoid")
    ap.add_argument("--regime", choices=["regime1", "regime2", "softmax"], default="regime2")
    ap.add_argument("--method", default="lm")
    ap.add_argument("--max-iter", type=int, default=1000)
    ap.add_argument("--cap", type=float, default=600.0, help="seconds per peer at most")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--exact",
        action="store_true",
        help="an exactly specified fit instead of the study's: a truth of 9 experts fitted with 9, from the truth "
        "plus N(0, 0.05^2) in every entry",
    )
    ap.add_argument("--gate-scale", type=float, default=1.0, help="the true gate slopes times this")
    ap.add_argument("--out", default="least_squares.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    truth = draw_truth(args.regime, args.expert, k=9 if args.exact else 8, seed=args.seed)
    with torch.no_grad():
        truth.gate.beta.mul_(args.gate_scale)
    if args.exact:
        if args.gate != ("softmax" if args.regime == "softmax" else "sigmoid"):
            ap.error("--exact fits the truth's own gate: --gate softmax with --regime softmax, else sigmoid")
        noise = torch.Generator().manual_seed(args.seed)
        start = {
            k: v.detach() + 0.05 * torch.randn(v.shape, generator=noise, dtype=torch.float64)
            for k, v in truth.named_parameters()
        }
    else:
        start = near_truth_start(truth, args.gate, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    out = dict(vars(args), separation=separation(truth), load=os.getloadavg())
    for n, peer, name in ((args.n, torch_lbfgs, "torch_lbfgs"), (args.scipy_n, scipy_trf, "scipy_trf")):
        if not n:
            continue
        X = torch.rand(n, 32, generator=gen, dtype=torch.float64) * 2 - 1
        y = truth.sample(X, gen)
        model = regression_model(9, 32, args.gate, args.expert)
        _, mine = ours(model, X, y, start, args.method, args.max_iter)
        theirs = peer(model, X, y, start, mine["rss"] * (1 + 1e-8), args.cap)
        speedup = None if theirs["seconds_to_target"] is None else theirs["seconds_to_target"] / mine["seconds"]
        out[f"n={n}"] = dict(ours=mine, **{name: theirs}, speedup=speedup)
        print(json.dumps({f"n={n}": out[f"n={n}"]}, indent=1), flush=True)
    out["load_after"] = os.getloadavg()
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
