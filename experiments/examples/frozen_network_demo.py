"""A frozen pre-trained network as the mean of f0, end to end (d = 1, under a minute on a CPU):

1. train a small regression net on task A, y = sin(2x) + x/2 + noise, and save its state dict;
2. task B: draw data from the contaminated model whose pre-trained component is that net,
   restored from the checkpoint and frozen, with a prompt N(tanh(eta x), nu) under the gate
   sigmoid(beta x + tau);
3. fit (beta, tau, eta, nu) with the package from random starts, print estimates with standard
   errors, and plot data, pre-trained mean, fitted predictive mean and gate probability.

    python experiments/examples/frozen_network_demo.py [--plot experiments/examples/frozen_network_demo.png]
"""

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch import nn  # noqa: E402

from softmoe_torch import Estimator  # noqa: E402
from softmoe_torch.settings.setting import Setting  # noqa: E402
from softmoe_torch.study.simulate import simulate  # noqa: E402

NOISE_A = 0.01  # variance of task A's noise: the pre-trained component's nu0
TRUTH = {"beta": [2.0], "tau": -0.5, "eta": [-1.5], "nu": 0.02, "perturb": {"eta": 0.0, "nu": 0.0, "power": 0.125}}


class TaskNet(nn.Module):
    """The pre-trained regression net: x (n, 1) -> (n,)."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def train_task_a(path: Path, n: int = 2000, steps: int = 800, seed: int = 0) -> TaskNet:
    """Fit TaskNet to task A by Adam on the squared error; save its state dict to ``path``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=gen)
    y = torch.sin(2 * x[:, 0]) + x[:, 0] / 2 + NOISE_A**0.5 * torch.randn(n, generator=gen)
    torch.manual_seed(seed)
    net = TaskNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
    torch.save(net.state_dict(), path)
    return net


def task_b_setting(checkpoint: Path) -> Setting:
    """The contaminated model of task B: the frozen TaskNet from ``checkpoint`` and a tanh prompt."""
    gaussian = {"_target_": "softmoe_torch.model.densities.Gaussian"}
    return Setting(
        OmegaConf.create(
            {
                "name": "frozen_network_demo",
                "dim": 1,
                "pretrained": {
                    "expert": {"_target_": f"{TaskNet.__module__}.TaskNet"},
                    "checkpoint": str(checkpoint),
                    "density": gaussian,
                    "nu": NOISE_A,
                },
                "prompt": {
                    "expert": {"_target_": "softmoe_torch.model.experts.TanhExpert", "dim": 1},
                    "density": gaussian,
                },
                "gate": {"_target_": "softmoe_torch.model.gates.SoftmaxGate", "dim": 1},
                "truth": TRUTH,
            }
        )
    )


def plot(model, true_model, x, y, path: Path):
    """Data coloured by the fitted prompt responsibility, the means and the gate probability."""
    grid = torch.linspace(float(x.min()), float(x.max()), 300, dtype=x.dtype)[:, None]
    with torch.no_grad():
        resp = model.responsibilities(x, y)[:, 1]
        fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
        ax.scatter(x[:, 0], y, c=resp, cmap="coolwarm", s=4, alpha=0.6, vmin=0, vmax=1)
        ax.plot(grid[:, 0], model.pretrained.mean(grid), "k-", lw=1.5, label="pre-trained mean (frozen net)")
        ax.plot(grid[:, 0], model.predictive_mean(grid), "C2-", lw=2, label="fitted predictive mean")
        ax.plot(grid[:, 0], true_model.predictive_mean(grid), "C2:", lw=2, label="true predictive mean")
        gate = ax.twinx()
        gate.plot(grid[:, 0], model.gate_probs(grid)[:, 1], "C1--", label="fitted gate P(prompt | x)")
        gate.plot(grid[:, 0], true_model.gate_probs(grid)[:, 1], "C1:", label="true gate")
    gate.set_ylim(0, 1)
    gate.set_ylabel("gate probability")
    ax.set_xlabel("x")
    ax.set_ylabel("y (colour: posterior P(prompt))")
    handles = ax.get_legend_handles_labels()[0] + gate.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    ax.set_title("task B: frozen task-A net + tanh prompt")
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main(argv=None) -> dict:
    """Run the demo; returns {parameter name: (estimate, standard error, truth)}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_suffix(".png"))
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "task_a.pt"
        train_task_a(checkpoint)
        setting = task_b_setting(checkpoint)
        X, Y = simulate(setting, args.n, [0], seed=1)
        model, true_model = setting.model(), setting.true_model(args.n)
    res = Estimator(model, "direct", n_init=5).fit(X[0], Y[0])
    print(res.summary())
    truth, se = setting.truth(args.n), res.se()
    out = {name: (est, se[name], truth[name]) for name, est in res.estimates().items()}
    for name, (est, s, t) in out.items():
        print(f"against the truth: {name} {float(est):.6g} {float(s):.4g} {float(t):.6g}")
    plot(res.model(), true_model, X[0], Y[0], args.plot)
    print(f"plot: {args.plot}")
    return out


if __name__ == "__main__":
    main()
