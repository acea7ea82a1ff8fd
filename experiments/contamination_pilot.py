"""A pilot of the contamination test's choice of fit (issue: is there a prompt at all?): on the
same data sets, the test's alternative fitted with the fit's own bounds (prompt variance >= 1e-8)
and with the variance floor 0.1 x nu0 (the command's default), at n = 1000 in the distinguishable
setting (Laplace f0). Per choice: the null distribution of LR over M data sets drawn under H0 (X
fresh each), the share of degenerate and unconverged fits, and the power of the test with the
null pool's 95% quantile as its critical value (the unconditional Monte Carlo test with B = M)
against weak contamination tau* = -7 and -6 (a prompt weight near 0.15% and 0.4%) (the setting's truth otherwise).

    python experiments/contamination_pilot.py [--M 60] [--reps 40]

Writes experiments/contamination/pilot.json and pilot.md. A pilot: M and the replications are
small and its intervals wide; the calibration and power studies are not this."""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from softmoe_torch import Estimator
from softmoe_torch.lrt import with_variance_floor
from softmoe_torch.settings.configs import CONF_DIR, register_resolvers
from softmoe_torch.settings.setting import Setting

HERE = Path(__file__).resolve().parent / "contamination"
N, SETTING, TAUS, FLOORS = 1000, "distinguishable", (-7.0, -6.0), (None, 0.1)


def wilson(hits: int, total: int, z: float = 1.96) -> list:
    """Wilson's 95% interval of a binomial proportion."""
    p = hits / total
    centre, half = (p + z * z / (2 * total)), z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return [(centre - half) / (1 + z * z / total), (centre + half) / (1 + z * z / total)]


def draws(setting: Setting, tau: float | None, M: int, seed: int):
    """M data sets (X fresh each): under H0 (tau None) or the setting's truth with gate.tau = tau."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(M, N, setting.dim, generator=g, dtype=torch.float64)
    model = setting.true_model(N)
    if tau is not None:
        with torch.no_grad():
            model.gate.tau.fill_(tau)
    f0 = model.pretrained
    with torch.no_grad():
        Y = torch.stack([model.sample(X[m], generator=g) if tau is not None
                         else f0.density.sample(f0.mean(X[m]), f0.nu.expand(N), g) for m in range(M)])
    return X, Y, torch.stack([f0(X[m], Y[m]).sum() for m in range(M)])


def statistics(estimator: Estimator, X, Y, null_loglik) -> dict:
    t0 = time.perf_counter()
    res = estimator.fit(X, Y, replications=[0] * len(Y))
    lr = (2 * (res.loglik - null_loglik)).clamp_min(0).tolist()
    return {"lr": lr, "status": res.status, "degenerate": [bool(d) for d in res.degenerate],
            "seconds": time.perf_counter() - t0}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--M", type=int, default=60, help="H0 data sets")
    parser.add_argument("--reps", type=int, default=40, help="contaminated data sets per tau*")
    args = parser.parse_args(argv)
    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        setting = Setting(compose("config", overrides=[f"setting={SETTING}"]).setting)
    data = {"H0": draws(setting, None, args.M, 1)} | {f"tau*={t:g}": draws(setting, t, args.reps, 2 + i) for i, t in enumerate(TAUS)}
    out = {"n": N, "setting": SETTING, "M": args.M, "reps": args.reps, "procedure": "newton, 3 random starts", "choices": {}}
    for floor in FLOORS:
        estimator = Estimator(setting.model(), "newton", n_init=3)
        if floor is not None:
            estimator = with_variance_floor(estimator, floor)
        name = "bounds only (nu >= 1e-8)" if floor is None else f"floor {floor:g} x nu0"
        cells = {k: statistics(estimator, *v) for k, v in data.items()}
        critical = float(np.quantile(cells["H0"]["lr"], 0.95))
        for k, c in cells.items():
            c["unconverged"] = sum(s != "converged" for s in c["status"])
            c["n_degenerate"] = sum(c["degenerate"])
            if k != "H0":
                hits = sum(v > critical for v in c["lr"])
                c["power"] = {"rate": hits / len(c["lr"]), "ci95": wilson(hits, len(c["lr"]))}
        out["choices"][name] = {"critical_95": critical, "null_median": float(np.median(cells["H0"]["lr"])), "cells": cells}
        print(name, {k: (c.get("power"), c["unconverged"], c["n_degenerate"], round(c["seconds"])) for k, c in cells.items()}, flush=True)
    HERE.mkdir(exist_ok=True)
    (HERE / "pilot.json").write_text(json.dumps(out, indent=1))
    lines = [f"# Contamination test pilot: {SETTING}, n = {N}, {args.M} H0 data sets, {args.reps} per tau*", "",
             "| alternative's fit | H0: LR median, 95% quantile | H0 degenerate / unconverged | "
             + " | ".join(f"power at {k} [95% CI]" for k in data if k != "H0") + " | seconds (all fits) |",
             "|---|---|---|" + "---|" * (len(data) - 1) + "---|"]
    for name, ch in out["choices"].items():
        c = ch["cells"]
        lines.append(f"| {name} | {ch['null_median']:.1f}, {ch['critical_95']:.1f} | {c['H0']['n_degenerate']} / {c['H0']['unconverged']} of {args.M} | "
                     + " | ".join(f"{c[k]['power']['rate']:.2f} [{c[k]['power']['ci95'][0]:.2f}, {c[k]['power']['ci95'][1]:.2f}]"
                                  for k in data if k != "H0")
                     + f" | {sum(v['seconds'] for v in c.values()):.0f} |")
    (HERE / "pilot.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
