"""TensorBoard logging of a sweep as it runs: per finished sample size the errors' mean and
spread, per batch its wall time and iterations, the current slopes once three sizes are done,
optional log-likelihood traces, and at the end the figure and hyper-parameters.

All of a run directory's events go to <run dir>/tensorboard, which TensorBoard shows as one run.
Steps are sample sizes (or fit counts), so a resumed run continues the same curves; the writer is
created at the first event, so a rerun with nothing to do adds no event file."""

from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from .report import error_table, summarize


class Monitor:
    """Writes event files under ``log_dir``; ``trace_fits`` fits get their traces logged."""

    def __init__(self, log_dir, trace: bool = False, trace_fits: int = 3, config=None):
        self.log_dir = Path(log_dir)
        self.trace = trace
        self.traces_left = int(trace_fits)
        self.config = config
        self._writer = None
        self.logged = False  # whether this process logged any fit

    @property
    def writer(self) -> SummaryWriter:
        """The event writer, created on first use; the first one in log_dir logs the config."""
        if self._writer is None:
            first = not any(self.log_dir.glob("events.out.tfevents.*"))
            self._writer = SummaryWriter(str(self.log_dir))
            if first and self.config is not None:
                self._writer.add_text("config", "```\n" + OmegaConf.to_yaml(self.config) + "\n```")
        return self._writer

    def log_batch(self, n: int, reps, rows, result, seconds: float):
        """Wall time and iterations of the batch at size n (step n); traces while some remain."""
        self.logged = True
        w = self.writer
        w.add_scalar("batch/seconds", seconds, n)
        w.add_scalar("batch/seconds_per_fit", seconds / len(reps), n)
        iters = np.array([r["n_iter"] for r in rows], float)
        w.add_scalar("batch/iterations_mean", iters.mean(), n)
        w.add_scalar("batch/iterations_max", iters.max(), n)
        w.add_scalar("batch/failed", sum(r["status"].startswith(("failed", "error")) for r in rows), n)
        if result is not None and self.trace:
            self._log_traces(n, reps, result)

    def _log_traces(self, n: int, reps, result):
        for j, rep in enumerate(reps):
            if self.traces_left <= 0:
                return
            for it, value in enumerate(result.trace[j]):
                self.writer.add_scalar(f"trace/n{n}_rep{rep}", value, it)
            self.traces_left -= 1

    def log_progress(self, n: int, rows, setting, seed: int):
        """After the batch at size n, if it completed n: the errors at n (mean, median, 10% and
        90% over replications, step n) and, with three or more sizes up to n complete, the slopes
        over them (step n)."""
        rows = [r for r in rows if r["setting"] == setting.name and r["seed"] == seed]
        finished = self._complete_sizes(rows)
        if n not in finished:
            return
        for p in setting.quantities():
            sizes, table = error_table(rows, p)
            errs = table[list(sizes).index(n)]
            for tag, value in (
                ("mean", np.nanmean(errs)),
                ("median", np.nanmedian(errs)),
                ("q10", np.nanquantile(errs, 0.1)),
                ("q90", np.nanquantile(errs, 0.9)),
            ):
                self.writer.add_scalar(f"error/{p}" if tag == "mean" else f"error_{tag}/{p}", float(value), n)
        below = [m for m in finished if m <= n]  # batches may finish out of order when several run at once
        if len(below) >= 3:
            done = [r for r in rows if r["n"] in below]
            for p, s in summarize(done, setting, n_boot=200)["params"].items():
                self.writer.add_scalar(f"slope/{p}", s["slope"], n)
                self.writer.add_scalar(f"slope_ci/{p}_low", s["ci_low"], n)
                self.writer.add_scalar(f"slope_ci/{p}_high", s["ci_high"], n)

    @staticmethod
    def _complete_sizes(rows) -> list:
        """Sizes whose every replication has a finished (non-error) row."""
        reps = {r["rep"] for r in rows}
        by_n = {}
        for r in rows:
            if not r["status"].startswith("error"):
                by_n.setdefault(r["n"], set()).add(r["rep"])
        return sorted(n for n, got in by_n.items() if got == reps)

    def log_summary(self, summary: dict, fig, hparam_dict: dict, step: int):
        """The figure and the hyper-parameters with the final slopes, in the same event file."""
        self.writer.add_figure("figure", fig, global_step=step, close=False)
        metrics = {f"hparam/slope_{p}": s["slope"] for p, s in summary["params"].items()}
        for summ in hparams(hparam_dict, metrics):
            self.writer.file_writer.add_summary(summ)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def close(self):
        if self._writer is not None:
            self._writer.close()
