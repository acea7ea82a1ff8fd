"""Regression mixtures of experts by least squares: the model against hand computations and
torch.distributions, the objective's derivatives against autograd, the fits against scipy's
least_squares (the oracle) and the properties of each solver."""

import math
import warnings

import numpy as np
import pytest
import scipy.optimize
import torch

from softmoe_torch import (
    AffineExpert,
    AffineReLUExpert,
    ConvergenceWarning,
    Estimator,
    RegressionMoE,
    SigmoidGate,
    SoftmaxGate,
    TanhExpert,
)
from softmoe_torch.estimation.ls_objective import GenericLS, StructuredLS, make_ls_objective
from softmoe_torch.model.experts import AffineSigmoidExpert, _gelu_derivatives


class AffineGELUExpert(AffineExpert):
    activation = staticmethod(torch.nn.functional.gelu)
    activation_derivatives = staticmethod(_gelu_derivatives)


def regression(K, d, gate="softmax", expert=AffineExpert, nu=0.01):
    g = SoftmaxGate(d, K - 1) if gate == "softmax" else SigmoidGate(d, K)
    return RegressionMoE([expert(d) for _ in range(K)], g, nu=nu).double()


def set_values(model, gen, scale=1.0):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return model


def test_regression_function_by_hand():
    m = regression(2, 1, "sigmoid")
    with torch.no_grad():
        m.experts[0].eta.fill_(2.0), m.experts[0].bias.fill_(-1.0)
        m.experts[1].eta.fill_(-0.5), m.experts[1].bias.fill_(3.0)
        m.gate.beta.copy_(torch.tensor([[1.0], [0.0]])), m.gate.tau.copy_(torch.tensor([0.0, -2.0]))
    x = torch.tensor([[0.5]], dtype=torch.float64)
    s = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expected = s(0.5) * (2 * 0.5 - 1) + s(-2.0) * (-0.25 + 3)
    assert float(m(x)) == pytest.approx(expected, rel=1e-14)
    soft = regression(2, 1, "softmax")
    with torch.no_grad():
        soft.gate.beta.fill_(1.0), soft.gate.tau.fill_(0.5)
        soft.experts[1].bias.fill_(4.0)
    w1 = math.exp(1.0) / (1 + math.exp(1.0))
    assert float(soft(x)) == pytest.approx(w1 * 4.0, rel=1e-14)


def test_log_prob_is_the_gaussian_and_samples_have_its_moments():
    gen = torch.Generator().manual_seed(0)
    m = set_values(regression(3, 2, "sigmoid", AffineReLUExpert, nu=0.25), gen)
    x = torch.rand(200_000, 2, generator=gen, dtype=torch.float64)
    y = m.sample(x, gen)
    normal = torch.distributions.Normal(m(x), 0.5)
    torch.testing.assert_close(m.log_prob(x, y), normal.log_prob(y))
    assert float((y - m(x)).var()) == pytest.approx(0.25, rel=0.01)


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
@pytest.mark.parametrize("expert", [AffineExpert, AffineGELUExpert, AffineSigmoidExpert])
def test_objective_derivatives_match_autograd(gate, expert):
    gen = torch.Generator().manual_seed(1)
    m = regression(3, 2, gate, expert)
    X = torch.randn(2, 40, 2, generator=gen, dtype=torch.float64)
    Y = torch.randn(2, 40, generator=gen, dtype=torch.float64)
    for cls in (StructuredLS, GenericLS):
        obj = cls(m, X, Y)
        u = 0.5 * torch.randn(2, obj.dim, generator=gen, dtype=torch.float64)
        v = torch.randn(2, obj.dim, generator=gen, dtype=torch.float64)
        w = torch.randn(2, 40, generator=gen, dtype=torch.float64)
        every = torch.arange(2)

        def fitted(t):  # through the model itself: the parameters loaded one replication at a time
            params = obj.unpack(t)
            rows = []
            for r in range(2):
                values = {k: p[r] for k, p in params.items()}
                rows.append(torch.func.functional_call(m, values, (X[r],)))
            return torch.stack(rows)

        def F(t):
            return ((Y - fitted(t)) ** 2).mean(-1).sum()

        lin = obj.linearize(u, every)
        J_v = torch.func.jvp(fitted, (u,), (v,))[1]
        JT_w = torch.func.vjp(fitted, u)[1](w)[0]
        H = torch.func.hessian(F)(u)
        torch.testing.assert_close(lin.F, obj.value(u, every))
        torch.testing.assert_close(lin.grad, torch.func.grad(F)(u))
        torch.testing.assert_close(lin.jvp(v), J_v)
        torch.testing.assert_close(lin.vjp(w), JT_w)
        torch.testing.assert_close(lin.hvp(v), torch.einsum("apbq,bq->ap", H, v))
        if lin.diag is not None:
            J = torch.func.jacfwd(fitted)(u)  # (2, n, 2, p)
            diag = torch.stack([(J[r, :, r] ** 2).mean(0) for r in range(2)])
            torch.testing.assert_close(lin.diag, diag)


def test_the_structured_path_is_chosen_only_where_it_applies():
    X, Y = torch.zeros(1, 3, 2, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64)
    assert isinstance(make_ls_objective(regression(2, 2), X, Y), StructuredLS)
    assert isinstance(make_ls_objective(regression(2, 2, expert=AffineSigmoidExpert), X, Y), StructuredLS)  # ridge
    assert isinstance(make_ls_objective(regression(2, 2, expert=TanhExpert), X, Y), GenericLS)
    mixed = RegressionMoE([AffineExpert(2), AffineReLUExpert(2)], SoftmaxGate(2, 1)).double()
    assert isinstance(make_ls_objective(mixed, X, Y), GenericLS)
    assert isinstance(make_ls_objective(regression(2, 2), X, Y, structured=False), GenericLS)


SEPARATED = {  # K = 2, d = 1, softmax gate: two lines, the gate switching between them at x = 0
    "experts.0.eta": [2.0],
    "experts.0.bias": 1.0,
    "experts.1.eta": [-2.0],
    "experts.1.bias": -1.0,
    "gate.beta": [[6.0]],
    "gate.tau": [0.0],
}


def simulated(K=2, d=1, n=2000, gate="softmax", expert=AffineExpert, R=1, seed=0):
    """Data of a well-separated truth (K = 2, d = 1, softmax: ``SEPARATED``) or of random values."""
    gen = torch.Generator().manual_seed(seed)
    truth = set_values(regression(K, d, gate, expert, nu=0.04), gen)
    if (K, d, gate) == (2, 1, "softmax"):
        with torch.no_grad():
            for name, p in truth.named_parameters():
                p.copy_(torch.tensor(SEPARATED[name], dtype=torch.float64))
    X = torch.rand(R, n, d, generator=gen, dtype=torch.float64) * 2 - 1
    Y = torch.stack([truth.sample(X[r], gen) for r in range(R)])
    start = {k: v.detach() + 0.1 for k, v in truth.trainable_parameters().items()}
    return truth, X, Y, start


def scipy_fit(model, X, y, start):
    """scipy.optimize.least_squares (trf, exact Jacobian by autograd) from the same start: the oracle."""
    obj = GenericLS(model, X[None], y[None])
    u0 = obj.pack({k: v[None] for k, v in start.items()})[0]
    fitted = obj.fitted(X[None])

    def residuals(u):
        return (y - fitted(torch.as_tensor(u)[None])[0]).numpy()

    def jac(u):
        return -torch.func.jacfwd(fitted)(torch.as_tensor(u)[None])[0, :, 0].numpy()

    out = scipy.optimize.least_squares(residuals, u0.numpy(), jac=jac, method="trf", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    return float(np.mean(out.fun**2)), torch.as_tensor(out.x)


@pytest.mark.parametrize("method", ["lm", "trust_newton", "ls_lbfgs"])
def test_least_squares_reaches_scipys_minimum(method, one_thread):
    truth, X, Y, start = simulated()
    res = Estimator(regression(2, 1), method).fit(X[0], Y[0], start=start)
    assert res.status == ["converged"] and float(res.gradient_max()[0]) <= 1e-8
    rss, u = scipy_fit(regression(2, 1), X[0], Y[0], start)
    assert float(res.noise_variance[0]) == pytest.approx(rss, rel=1e-10)
    obj = GenericLS(regression(2, 1), X, Y)
    torch.testing.assert_close(obj.pack(res.params)[0], u, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["lm", "trust_newton"])
def test_the_rss_never_rises_and_a_batch_fits_each_data_set_as_alone(method, one_thread):
    truth, X, Y, start = simulated(K=3, d=2, gate="sigmoid", expert=AffineGELUExpert, R=3, n=500, seed=2)
    est = Estimator(regression(3, 2, "sigmoid", AffineGELUExpert), method, max_iter=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        batch = est.fit(X, Y, start=start)
    for trace in batch.trace:
        assert all(b >= a for a, b in zip(trace, trace[1:]))  # the mean log-likelihood, up in RSS's mirror
    truth, X, Y, start = simulated(R=3, seed=4)
    est = Estimator(regression(2, 1), method)
    batch, alone = est.fit(X, Y, start=start), est.fit(X[1], Y[1], start=start, replications=[1])
    assert batch.status == ["converged"] * 3
    assert float(alone.mean_loglik[0]) == pytest.approx(float(batch.mean_loglik[1]), rel=1e-12)


def test_sgd_is_the_published_protocol_and_reproducible(one_thread):
    truth, X, Y, start = simulated(R=2, n=300)
    est = Estimator(regression(2, 1), "sgd", epochs=3, batch_size=32, lr=0.1, seed=5)
    a, b = est.fit(X, Y, start=start), est.fit(X, Y, start=start)
    torch.testing.assert_close(a.params, b.params)
    assert a.status[0].startswith("finished: 3 epochs") and not a.converged.any()
    # one epoch by hand for replication 1: its shuffle seeded seed + 1, steps of lr x the batch gradient
    one = Estimator(regression(2, 1), "sgd", epochs=1, batch_size=32, lr=0.1, seed=5).fit(X, Y, start=start)
    obj = GenericLS(regression(2, 1), X[1:], Y[1:])
    u = obj.pack({k: v[None] for k, v in start.items()})
    order = torch.randperm(300, generator=torch.Generator().manual_seed(6))
    for a0 in range(0, 300, 32):
        u = u - 0.1 * torch.func.grad(
            lambda w, i=order[a0 : a0 + 32]: ((Y[1, i] - obj.fitted(X[1:, i])(w)) ** 2).mean()
        )(u)
    torch.testing.assert_close(obj.pack({k: v[1:] for k, v in one.params.items()}), u)
    line = RegressionMoE([AffineExpert(1)], SigmoidGate(1, 1).requires_grad_(False)).double()  # a frozen gate:
    # nothing saturates (and the generic path fits the trainable parameters only)
    blown = Estimator(line, "sgd", epochs=40, lr=1e3).fit(X[0], Y[0])
    assert blown.status[0].startswith("failed: non-finite parameters in epoch")
    assert all(torch.isfinite(v).all() for v in blown.params.values())


def test_standard_errors_are_the_nonlinear_least_squares_ones_and_absent_when_singular(one_thread):
    truth, X, Y, start = simulated()
    res = Estimator(regression(2, 1), "lm").fit(X[0], Y[0], start=start)
    obj = GenericLS(regression(2, 1), X, Y)
    J = torch.func.jacfwd(obj.fitted(X))(obj.pack(res.params))[0, :, 0]
    expected = float(res.noise_variance[0]) * torch.linalg.inv(J.T @ J)
    torch.testing.assert_close(res.covariance(), expected)
    assert "se" in res.summary() and res.singular() is None
    twins = RegressionMoE([AffineExpert(1), AffineExpert(1)], SigmoidGate(1, 2)).double()
    same = {"experts.0.eta": torch.tensor([1.0]), "experts.0.bias": torch.tensor(0.5)}
    same |= {"experts.1.eta": torch.tensor([1.0]), "experts.1.bias": torch.tensor(0.5)}
    same |= {"gate.beta": torch.tensor([[0.3], [0.3]]), "gate.tau": torch.tensor([0.1, 0.1])}
    over = Estimator(twins, "lm", max_iter=1).fit(X[0], Y[0], start=same)
    assert "J^T J is singular" in over.singular()
    assert "no standard errors: J^T J is singular" in over.summary()
    assert torch.isnan(over.covariance()).all()
    assert "no_standard_errors" in over.to_dict()


def test_methods_belong_to_their_models():
    with pytest.raises(ValueError, match="a RegressionMoE is fitted by method lm"):
        Estimator(regression(2, 1), "newton")
    from softmoe_torch import Component, Gaussian, MixtureOfExperts

    mixture = MixtureOfExperts([Component(AffineExpert(1), Gaussian()) for _ in range(2)], SoftmaxGate(1, 1))
    with pytest.raises(ValueError, match="a mixture density is fitted by method"):
        Estimator(mixture, "lm")
    with pytest.raises(ValueError, match="fit.lr must be positive"):
        Estimator(regression(2, 1), "sgd", lr=0)
    with pytest.raises(ValueError, match="the gate gives 3 weights but the model has 2 experts"):
        Estimator(RegressionMoE([AffineExpert(1), AffineExpert(1)], SigmoidGate(1, 3))).fit(
            np.zeros((5, 1)), np.zeros(5)
        )


def test_the_studys_truths_follow_the_papers_description():
    from softmoe_torch.settings.regression_truths import draw_truth, near_truth_start, separation

    d = 32
    one = draw_truth("regime1", "relu", seed=3)
    two = draw_truth("regime2", "linear", seed=3)
    soft = draw_truth("softmax", "relu", seed=3)
    assert isinstance(one.experts[0], AffineReLUExpert) and type(two.experts[0]) is AffineExpert
    assert float(one.gate.beta.abs().max()) == 0 and float(two.gate.beta[0].abs().max()) == 0
    assert float(two.gate.beta[1:].abs().min()) > 0 and soft.gate.beta.shape == (7, d)
    assert isinstance(soft.gate, SoftmaxGate) and isinstance(one.gate, SigmoidGate)
    torch.testing.assert_close(draw_truth("regime1", "relu", seed=3).gate.tau, one.gate.tau)  # seeded
    # the variances as described: slopes N(0, 0.01 / d), experts N(0, 1 / d), over many draws
    slopes = torch.cat([draw_truth("regime2", "relu", seed=s).gate.beta[1:].detach().reshape(-1) for s in range(20)])
    experts = torch.cat([draw_truth("regime2", "relu", seed=s).experts[1].eta.detach() for s in range(20)])
    assert float(slopes.var()) == pytest.approx(0.01 / d, rel=0.1)
    assert float(experts.var()) == pytest.approx(1 / d, rel=0.2)
    # separation: the smallest distance between two atoms (b1, b0, a, b), by hand on a K = 2 truth
    small = regression(2, 1, "sigmoid")
    with torch.no_grad():
        small.gate.beta.copy_(torch.tensor([[0.0], [3.0]])), small.gate.tau.copy_(torch.tensor([0.0, 4.0]))
    assert separation(small) == pytest.approx(5.0)
    # the start: the k* atoms, then a copy of one, each entry moved by N(0, 0.05^2)
    start = near_truth_start(one, "sigmoid", seed=1)
    assert start["gate.beta"].shape == (9, d) and start["experts.8.eta"].shape == (d,)
    moved = torch.cat([start[f"experts.{i}.eta"] - one.experts[i].eta.detach() for i in range(8)])
    assert float(moved.std()) == pytest.approx(0.05, rel=0.1)
    copies = [float((start["experts.8.eta"] - one.experts[i].eta.detach()).std()) for i in range(8)]
    assert min(copies) == pytest.approx(0.05, rel=0.3) and sorted(copies)[1] > 0.1
    soft_start = near_truth_start(soft, "softmax", seed=1)
    assert soft_start["gate.beta"].shape == (8, d)


class UserLogits(torch.nn.Module):
    """What a user's gate below starts from: logits beta_j^T x + tau_j, beta (rows, d), tau (rows,)."""

    def __init__(self, dim, rows):
        super().__init__()
        self.beta = torch.nn.Parameter(torch.zeros(rows, dim))
        self.tau = torch.nn.Parameter(torch.zeros(rows))

    def logits(self, x):
        return x @ self.beta.T + self.tau


class TemperatureGate(UserLogits):
    """A gate of a user's: softmax(logits / T), expert 0's logit fixed at 0."""

    def __init__(self, dim, n_prompts, temperature):
        super().__init__(dim, n_prompts)
        self.temperature = temperature

    def forward(self, x):
        logits = self.logits(x) / self.temperature
        return torch.log_softmax(torch.cat([torch.zeros_like(logits[:, :1]), logits], -1), -1)


class TopKGate(UserLogits):
    """A sparse gate of a user's: the k largest of K logits kept, softmax over them, the rest weight 0."""

    def __init__(self, dim, n_experts, k):
        super().__init__(dim, n_experts)
        self.k = k

    def forward(self, x):
        logits = self.logits(x)
        kth = logits.topk(self.k, dim=-1).values[:, -1:]
        return torch.log_softmax(logits.masked_fill(logits < kth, float("-inf")), -1)


def test_a_gate_of_the_users_is_fitted_without_editing_the_package(one_thread):
    truth, X, Y, start = simulated()
    hot = RegressionMoE([AffineExpert(1), AffineExpert(1)], TemperatureGate(1, 1, 0.5)).double()
    assert isinstance(make_ls_objective(hot, X, Y), GenericLS)
    scaled = start | {"gate.beta": 0.5 * start["gate.beta"], "gate.tau": 0.5 * start["gate.tau"]}
    res = Estimator(hot, "lm").fit(X[0], Y[0], start=scaled)
    ref = Estimator(regression(2, 1), "lm").fit(X[0], Y[0], start=start)
    assert res.status == ["converged"]
    assert float(res.noise_variance[0]) == pytest.approx(float(ref.noise_variance[0]), rel=1e-10)
    torch.testing.assert_close(res.params["gate.beta"] / 0.5, ref.params["gate.beta"], atol=1e-5, rtol=0)
    torch.testing.assert_close(res.params["experts.1.eta"], ref.params["experts.1.eta"], atol=1e-5, rtol=0)

    sparse = RegressionMoE([AffineExpert(1) for _ in range(3)], TopKGate(1, 3, k=2)).double()
    values = {"gate.beta": [[4.0], [-4.0], [0.0]], "gate.tau": [0.0, 0.0, 1.0]}
    values |= {f"experts.{k}.eta": [e] for k, e in enumerate([2.0, -2.0, 0.0])}
    values |= {f"experts.{k}.bias": b for k, b in enumerate([1.0, -1.0, 2.0])}
    with torch.no_grad():
        for name, p in sparse.named_parameters():
            p.copy_(torch.tensor(values[name], dtype=torch.float64))
    sparse.nu.fill_(0.04)
    y = sparse.sample(X[0], torch.Generator().manual_seed(1))
    start = {k: v.detach() + 0.1 for k, v in sparse.trainable_parameters().items()}
    before = float(((y - torch.func.functional_call(sparse, start, (X[0],))) ** 2).mean())
    fit = Estimator(sparse, "lm").fit(X[0], y, start=start)
    assert float(fit.noise_variance[0]) < before
    assert fit.status[0].split(":")[0] in ("converged", "stalled")
    gate = {"beta": fit.params["gate.beta"][0], "tau": fit.params["gate.tau"][0]}
    weights = torch.func.functional_call(sparse.gate, gate, (X[0],)).exp()
    assert ((weights == 0).sum(-1) == 1).all()  # the fitted gate still weights k = 2 of the 3 experts
    assert "J^T J is singular" in fit.singular()  # a common shift of all K logits changes nothing


def test_the_structured_and_generic_paths_give_one_fit(one_thread):
    truth, X, Y, start = simulated()
    fast = Estimator(regression(2, 1), "lm").fit(X[0], Y[0], start=start)
    slow = Estimator(regression(2, 1), "lm", fused=False).fit(X[0], Y[0], start=start)
    assert fast.fused and not slow.fused and fast.n_evals > 0
    assert float(fast.noise_variance[0]) == pytest.approx(float(slow.noise_variance[0]), rel=1e-12)
    for name in fast.params:
        torch.testing.assert_close(fast.params[name], slow.params[name], atol=1e-6, rtol=0)  # both at gtol 1e-8


def test_least_squares_fits_inside_the_box_and_says_where_it_ends_on_a_bound(one_thread):
    gen = torch.Generator().manual_seed(7)
    X = torch.rand(1000, 1, generator=gen, dtype=torch.float64) * 2 - 1
    y = torch.where(X[:, 0] > 0, 1.0, -1.0) + 0.1 * torch.randn(1000, generator=gen, dtype=torch.float64)
    start = {"gate.beta": torch.tensor([[1.0]]), "gate.tau": torch.tensor([0.0])}
    start |= {"experts.0.eta": torch.tensor([0.0]), "experts.0.bias": torch.tensor(-1.0)}
    start |= {"experts.1.eta": torch.tensor([0.0]), "experts.1.bias": torch.tensor(1.0)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = Estimator(regression(2, 1), "lm", bounds={"real": 3.0}, max_iter=300).fit(X, y, start=start)
        free = Estimator(regression(2, 1), "lm", bounds=None, max_iter=300).fit(X, y, start=start)
    assert "gate.beta" in res.at_bound[0] and float(res["gate.beta"].abs().max()) <= 3.0
    assert float(free["gate.beta"].abs().max()) > 3.0  # a step: the free fit's gate slope runs off
    assert free.at_bound == [[]]
    with pytest.raises(ValueError, match="outside fit.bounds"):
        Estimator(regression(2, 1), "lm", bounds={"real": 0.5}).fit(X, y, start=start)
