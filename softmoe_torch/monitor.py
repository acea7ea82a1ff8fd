"""TensorBoard logging of a sweep: errors per sample size, slopes, the figure, hyper-parameters,
and (optionally) per-iteration log-likelihood traces of the first few fits."""
from pathlib import Path

import numpy as np

from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter


class Monitor:
    """Writes event files under ``log_dir``; ``trace_fits`` fits get their EM traces logged."""

    def __init__(self, log_dir, trace: bool = False, trace_fits: int = 3):
        self.writer = SummaryWriter(str(Path(log_dir)))
        self.trace = trace
        self.traces_left = int(trace_fits)

    def log_config(self, cfg):
        self.writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```")

    def log_fits(self, n: int, reps, result):
        """Log the per-iteration mean log-likelihood of the batch's fits while traces remain."""
        if not self.trace:
            return
        for j, rep in enumerate(reps):
            if self.traces_left <= 0:
                return
            for it, value in enumerate(result.trace[j]):
                self.writer.add_scalar(f"trace/n{n}_rep{rep}", value, it)
            self.traces_left -= 1

    def log_summary(self, rows, summary: dict, fig, hparams: dict):
        """Mean error per sample size (step = n), slopes, the figure and the run's hparams."""
        from .report import error_table

        for p in summary["params"]:
            sizes, table = error_table(rows, p)
            for n, errs in zip(sizes, table):
                self.writer.add_scalar(f"error/{p}", float(np.nanmean(errs)), int(n))
            self.writer.add_scalar(f"slope/{p}", summary["params"][p]["slope"], 0)
        self.writer.add_figure("figure", fig, close=False)
        metrics = {f"hparam/slope_{p}": s["slope"] for p, s in summary["params"].items()}
        self.writer.add_hparams(hparams, metrics, run_name=".")

    def close(self):
        self.writer.close()
