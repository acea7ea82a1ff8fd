"""softmoe_torch: maximum-likelihood estimation of softmax-contaminated mixtures of experts."""
from .convergence import ConvergenceWarning
from .densities import Density, Gaussian, Laplace, StudentT
from .em import FitOptions
from .estimator import Estimator
from .experts import GELUExpert, IndexExpert, LinearExpert, MLPExpert, ReLUExpert, SigmoidExpert, TanhExpert
from .gates import ConstantGate, SoftmaxGate
from .mixture import Component, ContaminatedMoE
from .results import FitResults

__all__ = [
    "Estimator", "FitResults", "FitOptions", "ConvergenceWarning",
    "Density", "Gaussian", "Laplace", "StudentT",
    "IndexExpert", "TanhExpert", "SigmoidExpert", "GELUExpert", "ReLUExpert", "LinearExpert", "MLPExpert",
    "SoftmaxGate", "ConstantGate", "Component", "ContaminatedMoE",
]
