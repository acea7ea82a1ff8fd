"""A setting: the packaged Hydra configs and what turns one ``setting`` node into modules, the true
parameters at n and the paper's four quantities. Builds models; fits nothing."""
