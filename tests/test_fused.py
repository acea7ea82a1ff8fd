"""The fused fast paths agree with the generic autograd path (value, gradient, Hessian) for every
built-in density and index expert, under both gates: the paper's one-prompt path, and the path for
K >= 2 components with any subset trainable; plug-ins fall back to autograd."""

import itertools
import warnings

import pytest
import torch
from torch import nn

from softmoe_torch import (
    AffineExpert,
    Component,
    ConstantGate,
    ContaminatedMoE,
    Gaussian,
    GELUExpert,
    Laplace,
    LinearExpert,
    MixtureOfExperts,
    MLPExpert,
    SigmoidExpert,
    SoftmaxGate,
    StudentT,
    TanhExpert,
)
from softmoe_torch.estimation.fused_mixture import MixtureFusedObjective, mixture_fused_supported
from softmoe_torch.estimation.objective import (
    FusedObjective,
    GenericObjective,
    fused_supported,
    make_objective,
    paper_fused_supported,
)
from softmoe_torch.estimation.params import ParamSpace, batched_log_joint, stack_params

D, R, N = 4, 2, 300
DENSITIES = {"gaussian": Gaussian, "laplace": Laplace, "student_t": lambda: StudentT(5.0)}
EXPERTS = {"tanh": TanhExpert, "sigmoid": SigmoidExpert, "gelu": GELUExpert, "linear": LinearExpert}


def model_of(density, expert, gate, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pre = Component(TanhExpert(D, eta=torch.eye(D)[0]), Laplace(), nu=0.01, frozen=True)
    g = (
        SoftmaxGate(D, beta=0.3 * torch.randn(D, generator=gen), tau=0.3)
        if gate == "softmax"
        else ConstantGate(tau=0.3)
    )
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


def mixture_of(layout, density, expert, gate, seed=0):
    """K >= 2 components: 'prompts' (a frozen Laplace component and two prompts), 'moe' (two
    trainable components), 'moe_frozen_middle' (three, the middle one frozen)."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: 0.5 * torch.randn(*shape, generator=gen)  # noqa: E731
    make = lambda e, dens, nu, **kw: Component(e(D, eta=rand(D)), dens(), nu=nu, **kw)  # noqa: E731
    if layout == "prompts":
        comps = [
            Component(TanhExpert(D, eta=torch.eye(D)[0]), Laplace(), nu=0.02, frozen=True),
            make(expert, density, 0.05),
            make(expert, density, 0.1),
        ]
    elif layout == "moe":
        comps = [make(expert, density, 0.05), make(expert, density, 0.1)]
    else:
        comps = [
            make(expert, density, 0.05),
            Component(TanhExpert(D, eta=rand(D)), Laplace(), nu=0.3, frozen=True),
            make(expert, density, 0.1),
        ]
    K = len(comps)
    g = (
        SoftmaxGate(D, K - 1, beta=0.3 * rand(K - 1, D), tau=rand(K - 1))
        if gate == "softmax"
        else ConstantGate(K - 1, tau=rand(K - 1))
    )
    cls = ContaminatedMoE if layout == "prompts" else MixtureOfExperts
    return (cls(comps[0], comps[1:], g) if layout == "prompts" else cls(comps, g)).double()


MIXTURE_EXPERTS = {**EXPERTS, "affine": AffineExpert}


@pytest.mark.parametrize("layout", ["prompts", "moe", "moe_frozen_middle"])
@pytest.mark.parametrize(
    "density,expert,gate",
    [
        *[(dens, "affine", "softmax") for dens in DENSITIES],
        *[("gaussian", e, "softmax") for e in ("tanh", "sigmoid", "gelu", "linear")],
        ("laplace", "tanh", "constant"),
        ("student_t", "affine", "constant"),
    ],
)
def test_mixture_fused_path_matches_autograd(layout, density, expert, gate):
    """K >= 2 components, any subset trainable: value, gradient, responsibilities and Hessian of
    the log-likelihood and of the EM's Q function equal autograd's to 1e-10."""
    model = mixture_of(layout, DENSITIES[density], MIXTURE_EXPERTS[expert], gate)
    X, Y = data(model)
    assert mixture_fused_supported(model) and not paper_fused_supported(model)
    space = ParamSpace(model, {"real": 10.0, "positive": [1e-6, 10.0]})
    u = space.to_unconstrained(stack_params(model, R))
    u = u + 0.1 * torch.randn(u.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    idx = torch.arange(R)
    fused, generic = make_objective(model, X, Y, space), GenericObjective(model, X, Y, space)
    assert isinstance(fused, MixtureFusedObjective)
    f, g = fused.evaluate(u, idx, 2), generic.evaluate(u, idx, 1)
    torch.testing.assert_close(f.loss, g.loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(f.grad, g.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(f.resp, g.resp, rtol=0, atol=1e-12)
    H = torch.stack([autograd_hessian(model, space, X, Y, u, r) for r in range(R)])
    torch.testing.assert_close(f.hess, H, rtol=0, atol=1e-10)
    q_f, q_g = fused.evaluate(u, idx, 2, resp=g.resp), generic.evaluate(u, idx, 1, resp=g.resp)
    torch.testing.assert_close(q_f.loss, q_g.loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(q_f.grad, q_g.grad, rtol=0, atol=1e-10)
    Hq = torch.stack([autograd_hessian(model, space, X, Y, u, r, g.resp) for r in range(R)])
    torch.testing.assert_close(q_f.hess, Hq, rtol=0, atol=1e-10)


def test_mixture_evaluation_in_blocks_of_samples_equals_one_pass():
    model = mixture_of("moe_frozen_middle", Gaussian, AffineExpert, "softmax")
    X, Y = data(model)
    space = ParamSpace(model, {"real": 10.0, "positive": [1e-6, 10.0]})
    u = space.to_unconstrained(stack_params(model, R)) + 0.1
    idx = torch.tensor([1, 0])
    one, blocks = MixtureFusedObjective(model, X, Y, space), MixtureFusedObjective(model, X, Y, space, block=7)
    assert len(blocks.blocks) > 2
    for resp in (None, one.evaluate(u, torch.arange(R), 0).resp[idx]):
        a, b = one.evaluate(u[idx], idx, 2, resp=resp), blocks.evaluate(u[idx], idx, 2, resp=resp)
        for x, y in zip(a, b):
            if x is not None:
                torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


def test_mixtures_with_plugins_take_the_generic_path():
    """A trainable component with a plug-in expert, or a frozen expert under a trainable variance,
    is evaluated by autograd; a frozen plug-in component does not stop the fused path."""
    plugin = MixtureOfExperts(
        [Component(AffineExpert(D), Gaussian()), Component(MLPExpert(D, 3), Gaussian())], SoftmaxGate(D)
    ).double()
    half = Component(AffineExpert(D), Gaussian())
    half.expert.requires_grad_(False)
    frozen_expert = MixtureOfExperts([Component(AffineExpert(D), Gaussian()), half], SoftmaxGate(D)).double()
    frozen_plugin = MixtureOfExperts(
        [Component(MLPExpert(D, 3), Gaussian(), frozen=True), Component(AffineExpert(D), Gaussian())], SoftmaxGate(D)
    ).double()
    assert not fused_supported(plugin) and not fused_supported(frozen_expert)
    assert mixture_fused_supported(frozen_plugin)


def _compiled_and_eager(monkeypatch=None):
    model = mixture_of("moe_frozen_middle", Gaussian, AffineExpert, "softmax")
    X, Y = data(model)
    space = ParamSpace(model, {"real": 10.0, "positive": [1e-6, 10.0]})
    u = space.to_unconstrained(stack_params(model, R)) + 0.1
    # blocks of 128, 128 and 44 samples: one compiled graph serves every block size
    eager, fast = (MixtureFusedObjective(model, X, Y, space, block=128, compile=c) for c in (False, True))
    return eager, fast, u


def assert_same_evaluations(eager, fast, u, idx, resp=None):
    for x, y in zip(eager.evaluate(u[idx], idx, 2, resp=resp), fast.evaluate(u[idx], idx, 2, resp=resp)):
        if x is not None:
            torch.testing.assert_close(y, x, rtol=1e-12, atol=1e-12)


def test_compiled_mixture_path_equals_the_eager_one():
    """fit.compile: value, gradient, Hessian and responsibilities through torch.compile equal the
    eager evaluation's to rounding, for the log-likelihood (what newton fits evaluate)."""
    eager, fast, u = _compiled_and_eager()
    assert_same_evaluations(eager, fast, u, torch.tensor([1, 0]))


def test_a_compiled_hessian_reads_the_last_value_where_it_was_at_the_same_points():
    """Compiled, a Hessian after a value at the same points (rows in any order) reads that value's
    posterior and gate weights: one pass per block of samples instead of two; at other points it
    makes its own value's pass. Either way it equals the eager one."""
    eager, fast, u = _compiled_and_eager()
    passes = []
    per_sample = fast.per_sample
    fast.per_sample = lambda *args: passes.append(args[-1]) or per_sample(*args)
    blocks = len(fast.blocks)
    fast.evaluate(u, torch.arange(R), 0)
    passes.clear()
    assert_same_evaluations(eager, fast, u, torch.tensor([1, 0]))
    assert passes == [2] * blocks
    fast.evaluate(u, torch.arange(R), 0)
    passes.clear()
    assert_same_evaluations(eager, fast, u + 0.01, torch.tensor([1, 0]))
    assert passes == [0, 2] * blocks


@pytest.mark.parametrize("singles_first", [False, True])
def test_precompile_makes_a_newton_fits_graphs_in_turns(singles_first):
    """``precompile`` calls the compiled evaluation as a marginal Newton fit does (a value, then a
    Hessian from weights shaped and laid out as a value's), for batches of two problems and of one:
    the Hessian of the first size, the values, the other Hessian. It keeps no value; eagerly it does
    nothing."""
    eager, fast, u = _compiled_and_eager()
    calls, per_sample = [], fast._per_sample  # the eager function stands in for the compiled one: the calls alone
    fast.per_sample = lambda *args: calls.append(args) or per_sample(*args)
    fast.precompile(u, singles_first)
    first, second = (1, 2) if singles_first else (2, 1)
    expected = [(first, 2)] + [(first, 0)] * 3 + [(second, 0)] * 3 + [(second, 2)]
    assert [(args[1].shape[0], args[-1]) for args in calls] == expected and not fast._values
    fast.evaluate(u[:2], torch.arange(2), 0)
    value = fast._values[0][3]
    hessian_given = calls[0][-2]
    assert hessian_given.shape[1:] == value.shape[1:] == (2 * fast.K, 128)  # block 0's samples (of 128, 128, 44)
    assert hessian_given.stride()[1:] == value.stride()[1:] and hessian_given.is_contiguous() and value.is_contiguous()
    eager_calls = []
    eager.per_sample = lambda *args: eager_calls.append(args)
    eager.precompile(u, singles_first)
    assert not eager_calls


@pytest.mark.slow
def test_compiled_q_function_equals_the_eager_one():
    """The same for the EM's Q function (responsibilities given): graphs of its own, 1.5-2.5 min of
    compilation from an empty inductor cache (the default suite's test above takes 1.5), so in the
    slow suite."""
    eager, fast, u = _compiled_and_eager()
    idx = torch.tensor([1, 0])
    assert_same_evaluations(eager, fast, u, idx, resp=eager.evaluate(u, torch.arange(R), 0).resp[idx])


def test_a_failed_compilation_falls_back_to_eager_with_one_warning(monkeypatch):
    """Where torch.compile cannot run (no C++ compiler, say), the fit goes on eagerly, the same
    numbers, and says so once."""
    from softmoe_torch.estimation import fused_mixture

    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("C++ compiler not found")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setitem(fused_mixture._COMPILE, "failed", None)
    eager, fast, u = _compiled_and_eager()
    idx = torch.arange(R)
    with pytest.warns(RuntimeWarning, match="fit.compile: torch.compile failed .*C\\+\\+ compiler not found"):
        assert_same_evaluations(eager, fast, u, idx)
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        assert_same_evaluations(eager, fast, u, idx)
    assert not [w for w in later if "fit.compile" in str(w.message)]


@pytest.mark.slow
def test_compiled_mixture_path_equals_the_eager_one_for_one_replication():
    """Batches of one replication (a specialised graph) as well."""
    eager, fast, u = _compiled_and_eager()
    for order in (0, 1):
        for x, y in zip(eager.evaluate(u[:1], torch.arange(1), order), fast.evaluate(u[:1], torch.arange(1), order)):
            if x is not None:
                torch.testing.assert_close(y, x, rtol=1e-12, atol=1e-12)
    assert_same_evaluations(eager, fast, u, torch.tensor([1]))
