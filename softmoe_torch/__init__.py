"""softmoe_torch: maximum-likelihood estimation of mixtures of experts, softmax-contaminated ones first."""

from .estimation.convergence import ConvergenceWarning
from .estimation.driver import FitOptions
from .estimation.estimator import Estimator
from .estimation.ls_results import LeastSquaresResults
from .estimation.results import FitResults
from .model.densities import Density, Gaussian, Laplace, StudentT
from .model.experts import (
    AffineExpert,
    AffineReLUExpert,
    GELUExpert,
    IndexExpert,
    LinearExpert,
    MLPExpert,
    ReLUExpert,
    SigmoidExpert,
    TanhExpert,
)
from .model.gates import ConstantGate, SigmoidGate, SoftmaxGate
from .model.mixture import Component, ContaminatedMoE, Mixture, MixtureOfExperts
from .model.regression import RegressionMoE

__all__ = [
    "Estimator",
    "FitResults",
    "FitOptions",
    "ConvergenceWarning",
    "Density",
    "Gaussian",
    "Laplace",
    "StudentT",
    "IndexExpert",
    "TanhExpert",
    "SigmoidExpert",
    "GELUExpert",
    "ReLUExpert",
    "LinearExpert",
    "AffineExpert",
    "AffineReLUExpert",
    "MLPExpert",
    "SoftmaxGate",
    "ConstantGate",
    "SigmoidGate",
    "Component",
    "Mixture",
    "ContaminatedMoE",
    "MixtureOfExperts",
    "RegressionMoE",
    "LeastSquaresResults",
]
