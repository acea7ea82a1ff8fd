"""The metrics unit: hand-computed cases of its statistics, and the old import paths of the moved
modules (kept for one release) giving the same objects with a DeprecationWarning."""

import importlib
import sys

import numpy as np
import pytest

from softmoe_torch.metrics import intervals, rates


def test_wilson_interval_of_five_in_ten_by_hand():
    # p = 1/2, z = 1.96: centre (0.5 + z^2/20) / (1 + z^2/10), half z sqrt(1/40 + z^2/400) / (1 + z^2/10)
    lo, hi = intervals.wilson(5, 10)
    assert lo == pytest.approx(0.23659, abs=1e-5) and hi == pytest.approx(0.76341, abs=1e-5)
    assert intervals.wilson(0, 20)[0] == 0.0 and intervals.wilson(20, 20)[1] == pytest.approx(1.0)


def test_window_slope_takes_the_sizes_in_its_window_only():
    sizes = np.array([1000, 2000, 4000, 8000, 16000])
    errors = np.outer(sizes**-0.5, np.ones(4))  # an exact power law inside the window ...
    errors[0] = 1.0  # ... and an outlier outside it
    out = rates.window_slope(sizes, errors, lo=2000)
    assert out["slope"] == pytest.approx(-0.5) and out["sizes"] == 4
    assert out["ci_low"] == pytest.approx(-0.5) and out["ci_high"] == pytest.approx(-0.5)
    assert rates.window_slope(sizes, errors, lo=8000) is None  # two sizes: fewer than min_sizes = 3
    assert rates.window_slope(sizes, np.full((5, 4), np.nan)) is None


@pytest.mark.parametrize(
    "old, new",
    [
        ("softmoe_torch.settings.voronoi", "softmoe_torch.metrics.voronoi"),
        ("softmoe_torch.study.metrics", "softmoe_torch.metrics.rates"),
        ("softmoe_torch.study.distance", "softmoe_torch.metrics.hellinger"),
    ],
)
def test_old_module_paths_warn_and_give_the_same_functions(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        shim = importlib.import_module(old)
    moved = importlib.import_module(new)
    public = [n for n in dir(moved) if not n.startswith("_") and callable(getattr(moved, n))]
    assert public and all(getattr(shim, n) is getattr(moved, n) for n in public)


def test_old_names_of_the_sweep_and_the_paper_errors_still_import():
    from softmoe_torch.metrics.parameters import param_errors
    from softmoe_torch.settings import paper
    from softmoe_torch.settings.configs import config_number
    from softmoe_torch.study import config_checks, store, sweep

    assert paper.param_errors is param_errors
    assert sweep.config_number is config_number and sweep.fit_options is config_checks.fit_options
    assert (
        sweep.columns is store.columns and sweep.Results is store.Results and sweep.validate is config_checks.validate
    )
