"""The true regression mixtures of the sigmoid-gating study (Nguyen, Ho & Rinaldo, "Sigmoid Gating is
More Sample Efficient than Softmax Gating in Mixture of Experts", NeurIPS 2024, arXiv 2405.13997,
Section 5 and Appendix), drawn with a committed seed as its text describes (its tables of true values
are images we could not read), and the study's start: the truth's atoms plus one copy.

Every N(0, v) is a normal of *variance* v; d the input dimension, k* the true number of experts:
- ``softmax`` (Fig. 1, "Regime 2" of a softmax-gated truth): gate slopes b1_i ~ N(0, (0.01 / d) I),
  intercepts b0_i ~ N(0, 0.01 / d), expert parameters (a_i, b_i) ~ N(0, 1 / d); expert 0 the gate's
  reference (its gate parameters 0);
- ``regime1`` (sigmoid gate): every b1_i = 0, b0_i and the experts as above;
- ``regime2`` (sigmoid gate): b1_i ~ N(0, (0.01 / d) I) with b1_0 = 0, b0_i and the experts as above."""

import torch

from ..model.experts import AffineExpert, AffineReLUExpert, AffineSigmoidExpert
from ..model.gates import SigmoidGate, SoftmaxGate
from ..model.regression import RegressionMoE

REGIMES = ("softmax", "regime1", "regime2")
EXPERTS = {"linear": AffineExpert, "relu": AffineReLUExpert, "sigmoid": AffineSigmoidExpert}


def regression_model(K: int, d: int, gate: str, expert: str, nu: float = 0.01) -> RegressionMoE:
    """A float64 ``RegressionMoE`` of K experts act(a^T x + b) (``expert`` 'linear', 'relu' or
    'sigmoid', the last a ridge expert sigmoid(a^T x + b)) under a
    'softmax' (expert 0 the reference) or 'sigmoid' gate."""
    g = SoftmaxGate(d, K - 1) if gate == "softmax" else SigmoidGate(d, K)
    return RegressionMoE([EXPERTS[expert](d) for _ in range(K)], g, nu=nu).double()


def draw_truth(regime: str, expert: str, d: int = 32, k: int = 8, seed: int = 0, nu: float = 0.01) -> RegressionMoE:
    """The true model of ``regime`` (see the module docstring), drawn from ``seed``."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {', '.join(REGIMES)}, got {regime!r}")
    gen = torch.Generator().manual_seed(seed)
    normal = lambda shape, var: torch.randn(shape, generator=gen, dtype=torch.float64) * var**0.5  # noqa: E731
    model = regression_model(k, d, "softmax" if regime == "softmax" else "sigmoid", expert, nu)
    with torch.no_grad():
        for e in model.experts:
            e.eta.copy_(normal(d, 1 / d))
            e.bias.copy_(normal((), 1 / d))
        rows = model.gate.tau.shape[0]
        beta = normal((rows, d), 0.01 / d)
        if regime == "regime1":
            beta.zero_()
        elif regime == "regime2":
            beta[0] = 0
        model.gate.beta.copy_(beta)
        model.gate.tau.copy_(normal(rows, 0.01 / d))
    return model


def atoms(params: dict, K: int, gate: str) -> torch.Tensor:
    """The K atoms (K, 2 d + 2) of parameters {name: tensor} (one replication): rows (b1_i, b0_i,
    a_i, b_i), a softmax gate's reference expert with b1 = 0, b0 = 0."""
    beta, tau = params["gate.beta"], params["gate.tau"]
    if gate == "softmax":
        beta = torch.cat([torch.zeros_like(beta[:1]), beta])
        tau = torch.cat([torch.zeros_like(tau[:1]), tau])
    experts = [torch.cat([params[f"experts.{i}.eta"], params[f"experts.{i}.bias"].reshape(1)]) for i in range(K)]
    return torch.cat([beta, tau[:, None], torch.stack(experts)], 1)


def separation(truth: RegressionMoE) -> float:
    """The smallest Euclidean distance between two true atoms (b1_i, b0_i, a_i, b_i)."""
    gate = "softmax" if isinstance(truth.gate, SoftmaxGate) else "sigmoid"
    a = atoms({k: v.detach() for k, v in truth.named_parameters()}, len(truth.experts), gate)
    dist = torch.cdist(a, a) + torch.diag(torch.full((a.shape[0],), torch.inf, dtype=a.dtype))
    return float(dist.min())


def near_truth_start(truth: RegressionMoE, gate: str, seed: int, scale: float = 0.05, copy: int | None = None) -> dict:
    """The study's start for a fit of k* + 1 experts under ``gate``: the k* true atoms, then a copy
    of one of them (``copy``, or one chosen at random), every entry plus N(0, scale^2); {name: tensor}. A softmax fit
    keeps expert 0 (the reference) first and its gate parameters out; a fit under the other gate
    than the truth's starts from the same atoms read as that gate's parameters."""
    k = len(truth.experts)
    t_gate = "softmax" if isinstance(truth.gate, SoftmaxGate) else "sigmoid"
    a = atoms({n: v.detach() for n, v in truth.named_parameters()}, k, t_gate)
    gen = torch.Generator().manual_seed(seed)
    if copy is None:
        copy = int(torch.randint(k, (1,), generator=gen))
    a = torch.cat([a, a[copy : copy + 1]])
    a = a + scale * torch.randn(a.shape, generator=gen, dtype=torch.float64)
    d = (a.shape[1] - 2) // 2
    start = {}
    for i in range(k + 1):
        start[f"experts.{i}.eta"], start[f"experts.{i}.bias"] = a[i, d + 1 : 2 * d + 1], a[i, -1]
    first = 1 if gate == "softmax" else 0
    start["gate.beta"], start["gate.tau"] = a[first:, :d], a[first:, d]
    return start
