"""softmoe_torch's Hydra launcher plugin (see slurm_launcher.py)."""
