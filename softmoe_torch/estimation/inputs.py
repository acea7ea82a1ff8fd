"""The checks of a user's data, in one place: numeric, finite arrays of the fit's dtype and device,
X (n, d) or (R, n, d) with the model's columns, y (n,) or (R, n) to match, at least 2
observations. Each problem is a one-line ValueError naming what to change."""

import numpy as np
import torch

from ..errors import one_line
from ..model.mixture import Mixture
from ..model.regression import RegressionMoE


def as_tensor(a, what: str, dtype: torch.dtype, device, finite: bool = True) -> torch.Tensor:
    """``a`` (numpy, torch or nested lists of numbers) as a tensor of ``dtype`` on ``device``;
    ``what`` names it in the error; with ``finite``, NaN and inf are refused."""
    array = a if isinstance(a, torch.Tensor) else np.asarray(a)
    try:
        t = torch.as_tensor(array)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be numeric, got an array of {array.dtype}; convert it to floats first") from None
    if not t.is_floating_point() and t.dtype != torch.long and t.dtype != torch.int:
        raise ValueError(f"{what} must be numeric, got {t.dtype}")
    t = t.to(dtype=dtype, device=device)
    if finite and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} must be finite (found NaN or inf)")
    return t


def as_batch(X: torch.Tensor, Y: torch.Tensor):
    """X (n, d) or (R, n, d), Y (n,) or (R, n) -> X (R, n, d), Y (R, n)."""
    if X.dim() == 2:
        X, Y = X.unsqueeze(0), Y.unsqueeze(0)
    if X.dim() != 3 or Y.shape != X.shape[:2]:
        raise ValueError(f"expected X (R, n, d) and y (R, n), got {tuple(X.shape)} and {tuple(Y.shape)}")
    return X, Y


def check_model(model) -> None:
    """Raise a one-line ValueError unless ``model`` is a mixture with something to fit."""
    if not isinstance(model, (Mixture, RegressionMoE)):
        raise ValueError(
            f"the model must be a mixture of softmoe_torch.model.mixture (ContaminatedMoE, MixtureOfExperts "
            f"or another Mixture) or a RegressionMoE, got {type(model).__name__}"
        )
    if not model.trainable_parameters():
        raise ValueError(
            "the model has no trainable parameters (every component and the gate frozen), so there is "
            "nothing to fit; leave a component unfrozen (Component(..., frozen=False)) or the gate trainable"
        )


def check_columns(model, X: torch.Tensor) -> None:
    """Raise a one-line ValueError unless ``model`` takes X's rows (..., d): a wrong number of
    columns is named here, not left to a matrix product deep inside a fit; so is a gate whose
    weights do not match the components."""
    x = X.reshape(-1, X.shape[-1])[:1]
    try:
        with torch.no_grad():
            weights = model.gate(x).shape[-1]
    except RuntimeError:
        weights = None  # the columns are wrong: said below
    if isinstance(model, RegressionMoE):
        if weights is not None and weights != len(model.experts):
            K = len(model.experts)
            raise ValueError(
                f"the gate gives {weights} weights but the model has {K} experts; build the gate for them "
                f"(SoftmaxGate(d, n_prompts={K - 1}) or SigmoidGate(d, n_experts={K}))"
            )
    elif weights is not None and weights != len(model.components):
        raise ValueError(
            f"the gate gives {weights} weights but the mixture has {len(model.components)} components; "
            f"build the gate for {len(model.components) - 1} non-reference components "
            f"(e.g. SoftmaxGate(d, n_prompts={len(model.components) - 1}))"
        )
    try:
        with torch.no_grad():
            model.log_prob(x, torch.zeros(1, dtype=X.dtype, device=X.device))
    except RuntimeError as err:
        declared = {p.shape[-1] for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] in ("beta", "eta")}
        wanted = (
            f"the model takes {declared.pop()}"
            if len(declared) == 1
            else f"the model cannot take them ({one_line(err)})"
        )
        raise ValueError(
            f"X has {X.shape[-1]} columns but {wanted}; pass X with the model's columns, "
            f"or build the model for d = {X.shape[-1]}"
        ) from None


def fit_data(model, X, y, dtype: torch.dtype, device):
    """A fit's data checked and batched: X (R, n, d), Y (R, n) of ``dtype`` on ``device``."""
    X, Y = as_batch(as_tensor(X, "X", dtype, device), as_tensor(y, "y", dtype, device))
    if X.shape[1] < 2:
        raise ValueError(f"need at least 2 observations per data set, got n = {X.shape[1]}")
    check_columns(model, X)
    return X, Y


def model_inputs(model, x, dtype: torch.dtype, device) -> torch.Tensor:
    """Inputs x (n, d) for a fitted model (predictions, gate weights): numeric, with the model's columns."""
    t = as_tensor(x, "X", dtype, device, finite=False)
    check_columns(model, t)
    return t
