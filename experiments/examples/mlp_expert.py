"""A two-layer MLP prompt expert, written as a user would write one: outside the package, selected
from the command line (see the README, "Extending"):

    PYTHONPATH=experiments/examples python -m softmoe_torch.fit data=FILE setting=distinguishable \\
        setting.prompt.expert._target_=mlp_expert.MLPExpert ++setting.prompt.expert.hidden=4

An expert is any ``nn.Module`` whose ``forward`` maps x (n, d) to means (n,); its parameters are
what the fit estimates. The settings pass ``dim`` (d) to the constructor.
"""

import torch
from torch import nn


class MLPExpert(nn.Module):
    """h(x) = w2^T tanh(W1 x + b1) + b2 with ``hidden`` units: W1 (hidden, dim), w2 (hidden,)."""

    def __init__(self, dim: int, hidden: int = 16):
        super().__init__()
        self.hidden = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(x))).squeeze(-1)
