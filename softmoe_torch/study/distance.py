"""Moved to ``softmoe_torch.metrics.hellinger``; this import path is kept for one release (it warns)."""

import warnings

from ..metrics.hellinger import *  # noqa: F403 (the moved module's public names)

warnings.warn("softmoe_torch.study.distance moved to softmoe_torch.metrics.hellinger", DeprecationWarning, stacklevel=2)
