import math

import pytest
import scipy.stats
import torch

from softmoe_torch.model.densities import Gaussian, Laplace, StudentT

Y = torch.linspace(-3, 3, 41, dtype=torch.float64)
MEAN = torch.tensor(0.3, dtype=torch.float64)
VAR = torch.tensor(0.7, dtype=torch.float64)


def test_gaussian_matches_torch_normal():
    ref = torch.distributions.Normal(MEAN, VAR.sqrt()).log_prob(Y)
    torch.testing.assert_close(Gaussian().log_prob(Y, MEAN, VAR), ref)


def test_laplace_is_variance_parametrized():
    ref = torch.distributions.Laplace(MEAN, torch.sqrt(VAR / 2)).log_prob(Y)
    torch.testing.assert_close(Laplace().log_prob(Y, MEAN, VAR), ref)


def test_student_t_matches_scipy_with_variance_scale():
    df = 5.0
    scale = math.sqrt(0.7 * (df - 2) / df)
    ref = torch.as_tensor(scipy.stats.t(df, loc=0.3, scale=scale).logpdf(Y.numpy()))
    torch.testing.assert_close(StudentT(df).log_prob(Y, MEAN, VAR), ref)


def test_student_t_rejects_infinite_variance():
    with pytest.raises(ValueError, match="df > 2"):
        StudentT(2.0)


@pytest.mark.parametrize("density", [Gaussian(), Laplace(), StudentT(6.0)])
def test_samples_have_the_asked_mean_and_variance(density):
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    y = density.sample(torch.full((n,), 0.3, dtype=torch.float64), torch.full((n,), 0.7, dtype=torch.float64), gen)
    assert abs(float(y.mean()) - 0.3) < 4 * math.sqrt(0.7 / n)
    assert abs(float(y.var()) / 0.7 - 1) < 0.03


@pytest.mark.parametrize("density", [Gaussian(), Laplace(), StudentT(6.0)])
def test_densities_integrate_to_one(density):
    grid = torch.linspace(-15, 15, 300_001, dtype=torch.float64)
    p = density.log_prob(grid, torch.tensor(0.2, dtype=torch.float64), torch.tensor(1.3, dtype=torch.float64)).exp()
    assert abs(float(torch.trapezoid(p, grid)) - 1) < 1e-3
