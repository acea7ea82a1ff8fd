"""Moved to ``softmoe_torch.metrics.voronoi``; this import path is kept for one release (it warns)."""

import warnings

from ..metrics.voronoi import *  # noqa: F403 (the moved module's public names)

warnings.warn("softmoe_torch.settings.voronoi moved to softmoe_torch.metrics.voronoi", DeprecationWarning, stacklevel=2)
