"""Likelihood-ratio tests calibrated by the parametric bootstrap: is there a prompt at all
(``contamination_test``; its statistic on many data sets, ``contamination_statistics``, and their
p-values against a pool of null draws, ``pooled_pvalues``), and K prompts against more (``prompts_test``)."""

from .bootstrap import contamination_statistics, contamination_test, null_draw, prompts_test, with_variance_floor
from .broad import broad_statistics
from .combine import pooled_pvalues
from .results import BootstrapTest
from .starts import anchored_starts, split_starts

__all__ = [
    "contamination_test",
    "contamination_statistics",
    "prompts_test",
    "with_variance_floor",
    "anchored_starts",
    "split_starts",
    "broad_statistics",
    "pooled_pvalues",
    "null_draw",
    "BootstrapTest",
]
