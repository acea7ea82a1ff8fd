"""Measures of error, one unit: the paper's parameter errors (``parameters``), Voronoi losses of
mixtures of experts (``voronoi``), the Hellinger distance between conditional densities
(``hellinger``), empirical rates, slopes of log error on log n (``rates``), and intervals of a
study's proportions (``intervals``). Imports the model
and the estimation layer only; settings, studies and tests use it."""

from .hellinger import hellinger, hellinger_batch
from .intervals import wilson
from .parameters import PAPER_PARAMS, paper_view, param_errors
from .rates import bootstrap_slope, fit_power_law, window_slope
from .voronoi import atoms, canonical_scale, papers_loss, theory_slope, voronoi_errors

__all__ = [
    "PAPER_PARAMS",
    "param_errors",
    "paper_view",
    "atoms",
    "papers_loss",
    "canonical_scale",
    "voronoi_errors",
    "theory_slope",
    "hellinger",
    "hellinger_batch",
    "bootstrap_slope",
    "fit_power_law",
    "window_slope",
    "wilson",
]
