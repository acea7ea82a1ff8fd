"""softmoe_torch: maximum-likelihood estimation of softmax-contaminated mixtures of experts."""
from .densities import Density, Gaussian, Laplace, StudentT
from .experts import GELUExpert, IndexExpert, LinearExpert, MLPExpert, ReLUExpert, SigmoidExpert, TanhExpert
from .gates import ConstantGate, SoftmaxGate
from .mixture import Component, ContaminatedMoE

__all__ = [
    "Density", "Gaussian", "Laplace", "StudentT",
    "IndexExpert", "TanhExpert", "SigmoidExpert", "GELUExpert", "ReLUExpert", "LinearExpert", "MLPExpert",
    "SoftmaxGate", "ConstantGate", "Component", "ContaminatedMoE",
]
