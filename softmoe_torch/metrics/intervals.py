"""Confidence intervals of a Monte Carlo study's proportions (a test's size and power)."""

import math


def wilson(hits: int, total: int, z: float = 1.96) -> list:
    """Wilson's score interval [lo, hi] of a binomial proportion hits / total (E. B. Wilson, "Probable
    inference, the law of succession, and statistical inference", JASA 22, 1927), 95% for z = 1.96."""
    p = hits / total
    centre, half = (p + z * z / (2 * total)), z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return [max(0.0, (centre - half) / (1 + z * z / total)), min(1.0, (centre + half) / (1 + z * z / total))]
