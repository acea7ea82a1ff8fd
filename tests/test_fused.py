"""The fused fast path agrees with the generic autograd path (value, gradient, Hessian) for every
built-in prompt density and index expert, under both gates; plug-ins fall back to autograd."""
import itertools

import pytest
import torch
from torch import nn

from softmoe_torch import (Component, ConstantGate, ContaminatedMoE, GELUExpert, Gaussian, Laplace, LinearExpert,
                           MLPExpert, SigmoidExpert, SoftmaxGate, StudentT, TanhExpert)
from softmoe_torch.estimation.objective import FusedObjective, GenericObjective, fused_supported, make_objective
from softmoe_torch.estimation.params import ParamSpace, batched_log_joint, stack_params

D, R, N = 4, 2, 300
DENSITIES = {"gaussian": Gaussian, "laplace": Laplace, "student_t": lambda: StudentT(5.0)}
EXPERTS = {"tanh": TanhExpert, "sigmoid": SigmoidExpert, "gelu": GELUExpert, "linear": LinearExpert}


def model_of(density, expert, gate, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pre = Component(TanhExpert(D, eta=torch.eye(D)[0]), Laplace(), nu=0.01, frozen=True)
    g = SoftmaxGate(D, beta=0.3 * torch.randn(D, generator=gen), tau=0.3) if gate == "softmax" else ConstantGate(tau=0.3)
    prompt = Component(expert(D, eta=0.5 * torch.randn(D, generator=gen)), density(), nu=0.05)
    return ContaminatedMoE(pre, prompt, g).double()


def data(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(R, N, D, dtype=torch.float64, generator=gen)
    return X, torch.stack([model.sample(X[r], generator=gen) for r in range(R)])


def autograd_hessian(model, space, X, Y, u, r, resp=None):
    def loss(v):
        lj = batched_log_joint(model, space.to_natural(v[None]), X[r : r + 1], Y[r : r + 1])
        return -torch.logsumexp(lj, -1).mean() if resp is None else -(resp[r : r + 1] * lj).sum(-1).mean()

    return torch.autograd.functional.hessian(loss, u[r])


@pytest.mark.parametrize("density,expert,gate", itertools.product(DENSITIES, EXPERTS, ["softmax", "constant"]))
def test_fused_matches_autograd(density, expert, gate):
    model = model_of(DENSITIES[density], EXPERTS[expert], gate)
    X, Y = data(model)
    assert fused_supported(model)
    space = ParamSpace(model, {"real": 10.0, "positive": [1e-6, 10.0]})
    u = space.to_unconstrained(stack_params(model, R))
    u = u + 0.1 * torch.randn(u.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    idx = torch.arange(R)
    fused, generic = FusedObjective(model, X, Y, space), GenericObjective(model, X, Y, space)
    f, g = fused.evaluate(u, idx, 2), generic.evaluate(u, idx, 1)
    torch.testing.assert_close(f.loss, g.loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(f.grad, g.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(f.resp, g.resp[..., 1], rtol=0, atol=1e-12)
    H = torch.stack([autograd_hessian(model, space, X, Y, u, r) for r in range(R)])
    torch.testing.assert_close(f.hess, H, rtol=0, atol=1e-10)
    # the EM's Q function at fixed responsibilities: same gradient and Hessian (its value differs by a constant)
    q_f = fused.evaluate(u, idx, 2, resp=f.resp)
    q_g = generic.evaluate(u, idx, 1, resp=g.resp)
    torch.testing.assert_close(q_f.grad, q_g.grad, rtol=0, atol=1e-10)
    Hq = torch.stack([autograd_hessian(model, space, X, Y, u, r, g.resp) for r in range(R)])
    torch.testing.assert_close(q_f.hess, Hq, rtol=0, atol=1e-10)


def test_evaluation_in_blocks_of_samples_equals_one_pass():
    """At large n the fused evaluation runs block by block; the result must not depend on it."""
    model = model_of(DENSITIES["gaussian"], EXPERTS["tanh"], "softmax")
    X, Y = data(model)
    space = ParamSpace(model, {"real": 10.0, "positive": [1e-6, 10.0]})
    u = space.to_unconstrained(stack_params(model, R)) + 0.1
    idx = torch.tensor([1, 0])  # a reordered subset of the replications
    one, blocks = FusedObjective(model, X, Y, space), FusedObjective(model, X, Y, space, block=7)
    assert len(blocks.blocks) > 2 and blocks.blocks[-1][1] == X.shape[1]
    for resp in (None, one.evaluate(u, torch.arange(R), 0).resp[idx]):
        a, b = one.evaluate(u[idx], idx, 2, resp=resp), blocks.evaluate(u[idx], idx, 2, resp=resp)
        for x, y in zip(a, b):
            if x is not None:
                torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


class ScaledTanh(TanhExpert):
    """A plug-in that changes the activation but gives no derivatives: must use autograd."""

    activation = staticmethod(lambda z: 2 * torch.tanh(z))


class Mean(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return x @ self.w


@pytest.mark.parametrize("prompt", [ScaledTanh(D), MLPExpert(D, 3), Mean(D)], ids=["subclass", "mlp", "module"])
def test_plugins_take_the_generic_path(prompt):
    pre = Component(TanhExpert(D), Gaussian(), nu=0.01, frozen=True)
    model = ContaminatedMoE(pre, Component(prompt, Gaussian()), SoftmaxGate(D)).double()
    X, Y = torch.randn(1, 50, D, dtype=torch.float64), torch.randn(1, 50, dtype=torch.float64)
    assert not fused_supported(model)
    assert isinstance(make_objective(model, X, Y, ParamSpace(model)), GenericObjective)


def test_two_prompts_take_the_generic_path():
    pre = Component(TanhExpert(D), Gaussian(), nu=0.01, frozen=True)
    model = ContaminatedMoE(pre, [Component(TanhExpert(D), Gaussian()) for _ in range(2)], SoftmaxGate(D, 2)).double()
    assert not fused_supported(model)
