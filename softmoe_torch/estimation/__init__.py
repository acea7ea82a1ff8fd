"""Maximum likelihood for a model of ``softmoe_torch.model``: the Estimator, its FitResults, the
fitting driver of every method (EM, direct BFGS, Newton) and what it is built from. Knows nothing
of settings, sweeps or files."""
