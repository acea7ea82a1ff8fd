"""Per-fit diagnostics of a simulated sweep, beside the parameter errors: is the MLE found
(log-likelihood at the estimate minus at the truth), how far the fit moved from its start, and
how far the fitted conditional density is from the true one (Hellinger, ``softmoe_torch.metrics.hellinger``)."""

import copy
import math

import torch

from ..estimation.ls_solvers import mean_loglik
from ..metrics.hellinger import hellinger_batch
from ..model.mixture import ContaminatedMoE
from ..model.regression import RegressionMoE

X_SEED = 20250101  # the fixed x sample of the Hellinger distance: the same for every fit and n


def loglik_at_truth(truth: ContaminatedMoE, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Mean log-likelihood of the true model on each data set; X (R, n, d), Y (R, n) -> (R,).
    The means are taken in numpy (pairwise, one thread), so they do not depend on torch's threads.
    For a regression mixture, the profile log-likelihood -(log(2 pi RSS / n) + 1) / 2 at the true
    regression function, as its least-squares fits report theirs."""
    truth = copy.deepcopy(truth).to(device=X.device, dtype=X.dtype)
    with torch.no_grad():
        if isinstance(truth, RegressionMoE):
            rss = torch.tensor([((y - truth(x)) ** 2).cpu().double().numpy().mean() for x, y in zip(X, Y)])
            return mean_loglik(rss.to(torch.float64))
        return torch.tensor(
            [truth.log_prob(x, y).cpu().double().numpy().mean() for x, y in zip(X, Y)], dtype=torch.float64
        )


def moved_from_start(starts: list, params: dict) -> torch.Tensor:
    """Largest absolute change of any fitted parameter from its start, (R,); NaN unless there
    was a single start (with several, the kept fit's start is not recorded)."""
    R = next(iter(params.values())).shape[0]
    if len(starts) != 1:
        return torch.full((R,), math.nan, dtype=torch.float64)
    deltas = [(params[k].cpu().double() - v.cpu().double()).reshape(R, -1).abs() for k, v in starts[0].items()]
    return torch.cat(deltas, dim=1).amax(dim=1)


def hellinger_to_truth(truth: ContaminatedMoE, setting, model, params: dict, points: int) -> torch.Tensor:
    """Hellinger distance of each fit's conditional density to the truth's (float64, CPU), over
    ``points`` fixed draws of ``setting.inputs`` (R,); NaN for all when points == 0."""
    R = next(iter(params.values())).shape[0]
    if points == 0:
        return torch.full((R,), math.nan, dtype=torch.float64)
    x = setting.inputs(points, torch.Generator().manual_seed(X_SEED))
    fitted = {k: v.detach().cpu().double() for k, v in params.items()}
    return hellinger_batch(truth, model, fitted, x)
