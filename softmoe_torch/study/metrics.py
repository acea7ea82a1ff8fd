"""Moved to ``softmoe_torch.metrics.rates``; this import path is kept for one release (it warns)."""

import warnings

from ..metrics.rates import *  # noqa: F403 (the moved module's public names)

warnings.warn("softmoe_torch.study.metrics moved to softmoe_torch.metrics.rates", DeprecationWarning, stacklevel=2)
