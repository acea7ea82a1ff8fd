"""Draw data sets from a setting's true model, deterministic given (seed, setting, n, rep)."""

import numpy as np
import torch


def data_seed(seed: int, setting: str, n: int, rep: int) -> int:
    """A 63-bit seed for one data set, independent across (seed, setting, n, rep)."""
    words = [seed, n, rep, *setting.encode()]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def simulate(setting, n: int, reps, seed: int = 0, dtype=torch.float64, device="cpu"):
    """R = len(reps) data sets of size n: X (R, n, d) from ``setting.inputs`` (N(0, I) for the
    paper's settings), y (R, n) ~ p_G*(y | x) with G* = setting.true_model(n). Each replication
    depends only on (seed, setting.name, n, rep)."""
    model = setting.true_model(n)
    Xs, ys = [], []
    for rep in reps:
        gen = torch.Generator().manual_seed(data_seed(seed, setting.name, n, rep))
        x = setting.inputs(n, gen)
        Xs.append(x)
        ys.append(model.sample(x, generator=gen))
    return torch.stack(Xs).to(device=device, dtype=dtype), torch.stack(ys).to(device=device, dtype=dtype)
