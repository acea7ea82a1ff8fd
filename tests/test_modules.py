import pytest
import torch

from softmoe_torch import (
    Component,
    ConstantGate,
    ContaminatedMoE,
    Gaussian,
    GELUExpert,
    Laplace,
    LinearExpert,
    MLPExpert,
    ReLUExpert,
    SigmoidExpert,
    SoftmaxGate,
    TanhExpert,
)
from softmoe_torch.estimation.params import ParamSpace, batched_log_joint, stack_params

# torch's default dtype is float64 here as in every test (conftest.py sets it)


def paper_model(d=3):
    pre = Component(TanhExpert(d), Laplace(), nu=0.01, frozen=True)
    with torch.no_grad():
        pre.expert.eta.copy_(torch.eye(d)[0])
    prompt = Component(TanhExpert(d), Gaussian(), nu=0.02)
    gate = SoftmaxGate(d)
    with torch.no_grad():
        prompt.expert.eta.copy_(torch.tensor([-1.0, 0.5, 0.0]))
        gate.beta.copy_(torch.tensor([[0.3, -0.2, 0.1]]))
        gate.tau.fill_(0.7)
    return ContaminatedMoE(pre, prompt, gate)


@pytest.mark.parametrize(
    "expert,act",
    [
        (TanhExpert, torch.tanh),
        (SigmoidExpert, torch.sigmoid),
        (GELUExpert, torch.nn.functional.gelu),
        (ReLUExpert, torch.relu),
        (LinearExpert, lambda z: z),
    ],
)
def test_index_experts(expert, act):
    e = expert(4)
    with torch.no_grad():
        e.eta.copy_(torch.tensor([0.5, -1.0, 2.0, 0.1]))
    x = torch.randn(10, 4)
    torch.testing.assert_close(e(x), act(x @ e.eta))


def test_mlp_expert_shape():
    assert MLPExpert(4, hidden=5)(torch.randn(7, 4)).shape == (7,)


def test_gates_sum_to_one_and_k1_is_the_sigmoid():
    x = torch.randn(50, 3)
    gate = SoftmaxGate(3, n_prompts=1)
    with torch.no_grad():
        gate.beta.normal_()
        gate.tau.fill_(0.4)
    w = gate(x).exp()
    torch.testing.assert_close(w.sum(-1), torch.ones(50))
    torch.testing.assert_close(w[:, 1], torch.sigmoid(x @ gate.beta[0] + 0.4))
    w3 = SoftmaxGate(3, n_prompts=3)(x).exp()
    torch.testing.assert_close(w3.sum(-1), torch.ones(50))
    wc = ConstantGate(2)(x).exp()
    torch.testing.assert_close(wc, torch.full((50, 3), 1 / 3))


def test_mixture_log_prob_is_the_paper_formula():
    m = paper_model()
    x, y = torch.randn(40, 3), 0.3 * torch.randn(40)
    s = torch.sigmoid(x @ m.gate.beta[0] + m.gate.tau[0])
    f0 = torch.distributions.Laplace(torch.tanh(x[:, 0]), (0.01 / 2) ** 0.5).log_prob(y).exp()
    f = torch.distributions.Normal(torch.tanh(x @ m.prompts[0].expert.eta), 0.02**0.5).log_prob(y).exp()
    torch.testing.assert_close(m.log_prob(x, y), torch.log((1 - s) * f0 + s * f))
    r = m.responsibilities(x, y)
    torch.testing.assert_close(r[:, 1], s * f / ((1 - s) * f0 + s * f))
    torch.testing.assert_close(
        m.predictive_mean(x), (1 - s) * torch.tanh(x[:, 0]) + s * torch.tanh(x @ m.prompts[0].expert.eta)
    )


def test_sampling_follows_the_gate():
    m = paper_model()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20000, 3, generator=gen)
    y = m.sample(x, generator=gen)
    # the prompt's mean is near tanh(-x0 + ...), the pre-trained's near tanh(x0): check which is closer
    closer_to_prompt = ((y - torch.tanh(x @ m.prompts[0].expert.eta)).abs() < (y - torch.tanh(x[:, 0])).abs()).double()
    expected = torch.sigmoid(x @ m.gate.beta[0] + m.gate.tau[0]).mean().detach()
    assert abs(float(closer_to_prompt.mean() - expected)) < 0.03


def test_pretrained_must_be_frozen():
    with pytest.raises(ValueError, match="frozen"):
        ContaminatedMoE(Component(TanhExpert(2), Gaussian()), Component(TanhExpert(2), Gaussian()), SoftmaxGate(2))


def test_param_space_round_trip_and_bounds():
    m = paper_model()
    space = ParamSpace(m, {"real": 5.0, "positive": [1e-6, 10.0]})
    assert set(space.names) == {"gate.beta", "gate.tau", "prompts.0.expert.eta", "prompts.0.nu"}
    p = stack_params(m, 3)
    back = space.to_natural(space.to_unconstrained(p))
    for k in p:
        torch.testing.assert_close(back[k], p[k])
    p["gate.tau"][1] = 7.0
    with pytest.raises(ValueError, match="outside its bounds"):
        space.to_unconstrained(p)
    with pytest.raises(ValueError, match="unknown bound keys"):
        ParamSpace(m, {"gamma": 1.0})


def test_batched_evaluation_matches_the_module():
    m = paper_model()
    X, Y = torch.randn(2, 30, 3), torch.randn(2, 30)
    lj = batched_log_joint(m, stack_params(m, 2), X, Y)
    for r in range(2):
        torch.testing.assert_close(lj[r], m.log_joint(X[r], Y[r]))


def test_param_space_reports_estimates_on_a_bound():
    m = paper_model()
    space = ParamSpace(m, {"real": 5.0, "positive": [1e-6, 10.0], "gate": {"tau": 10.0}})
    p = stack_params(m, 3)
    p["gate.tau"][1] = 9.9999
    p["prompts.0.nu"][2] = 1.00001e-6
    assert space.at_bound(p) == [[], ["gate.tau"], ["prompts.0.nu"]]


@pytest.mark.parametrize("bounds", [None, {"real": 5.0, "positive": [1e-6, 10.0]}])
def test_the_parameter_maps_derivatives_are_analytic_and_equal_autograd(bounds):
    """natural_flat's analytic chain rule (sigmoid, exp and affine stages) against autograd through
    the transforms themselves, far into the tails too; a batch's rows equal single rows bit for bit."""
    from softmoe_torch.estimation.params import autograd_derivatives

    space = ParamSpace(paper_model(), bounds)
    assert space.stages is not None
    u = torch.linspace(-12.0, 12.0, 7 * space.dim).reshape(7, space.dim)
    theta, d1, d2 = space.natural_flat(u, order=2)
    for name, tr in zip(space.names, space.transforms):
        want = autograd_derivatives(tr, u[:, space.slices[name]])
        for got, ref in zip((theta, d1, d2), want):
            torch.testing.assert_close(got[:, space.slices[name]], ref, rtol=1e-9, atol=1e-12)
    for r in range(7):
        for got, one in zip((theta, d1, d2), space.natural_flat(u[r : r + 1], order=2)):
            assert torch.equal(got[r : r + 1], one)
    assert space.natural_flat(u, order=1)[2] is None


def test_the_parameter_maps_derivatives_by_hand():
    """At u = 0: a real parameter in [-5, 5] is 0 + 10 sigmoid(0) - 5 = 0 with slope 10/4 and no
    curvature; a positive one in [1e-6, 10] is exp(l + (h - l)/2), l, h the bounds' logs, with
    slope (h - l)/4 times it and curvature ((h - l)/4)^2 times it; an unbounded positive one is
    exp(u): 1, 1, 1."""
    import math

    space = ParamSpace(paper_model(), {"real": 5.0, "positive": [1e-6, 10.0]})
    theta, d1, d2 = space.natural_flat(torch.zeros(1, space.dim), order=2)
    real, nu = space.slices["gate.tau"], space.slices["prompts.0.nu"]
    torch.testing.assert_close(theta[0, real], torch.zeros(1))
    torch.testing.assert_close(d1[0, real], torch.tensor([2.5]))
    torch.testing.assert_close(d2[0, real], torch.zeros(1))
    lo, hi = math.log(1e-6), math.log(10.0)
    value, w = math.exp((lo + hi) / 2), (hi - lo) / 4
    torch.testing.assert_close(theta[0, nu], torch.tensor([value]))
    torch.testing.assert_close(d1[0, nu], torch.tensor([w * value]))
    torch.testing.assert_close(d2[0, nu], torch.tensor([w * w * value]))
    free = ParamSpace(paper_model())
    theta, d1, d2 = free.natural_flat(torch.zeros(1, free.dim), order=2)
    assert theta[0, free.slices["prompts.0.nu"]].item() == d1[0, free.slices["prompts.0.nu"]].item() == 1.0
    assert d2[0, free.slices["prompts.0.nu"]].item() == 1.0


def test_a_declared_domain_without_analytic_stages_takes_autograd():
    """A module that declares a domain whose bijection holds a map other than sigmoid, exp and
    affine ones (here an IndependentTransform) sends the whole vector through autograd, with the
    analytic path's numbers."""
    from torch.distributions import constraints

    analytic = ParamSpace(paper_model(), {"real": 5.0, "positive": [1e-6, 10.0]})
    model = paper_model()
    model.prompts[0].expert.param_constraints = {"eta": constraints.independent(constraints.real, 1)}
    space = ParamSpace(model, {"real": 5.0, "positive": [1e-6, 10.0]})
    assert analytic.stages is not None and space.stages is None
    u = torch.linspace(-3.0, 3.0, 2 * space.dim).reshape(2, space.dim)
    for got, want in zip(space.natural_flat(u, order=2), analytic.natural_flat(u, order=2)):
        eta = space.slices["prompts.0.expert.eta"]
        rest = torch.ones(space.dim, dtype=torch.bool)
        rest[eta] = False
        torch.testing.assert_close(got[:, rest], want[:, rest], rtol=1e-12, atol=1e-14)
    _, d1, d2 = space.natural_flat(u, order=2)
    torch.testing.assert_close(d1[:, eta], torch.ones(2, eta.stop - eta.start))
    torch.testing.assert_close(d2[:, eta], torch.zeros(2, eta.stop - eta.start))
