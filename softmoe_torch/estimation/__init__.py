"""Maximum likelihood for a model of ``softmoe_torch.model``: the Estimator, its FitResults, the
fitting driver of every method (EM, direct BFGS, Newton) and what it is built from; least squares
for regression mixtures (``ls_*.py``). Knows nothing of settings, sweeps or files."""
