"""Hydra entry for the paper's experiments:

    python -m softmoe_torch.run setting=distinguishable [sweep.reps=..] [fit.method=..] ...

Writes results.csv, figure.png/pdf, slopes.json, report.md and TensorBoard events into the run
directory (outputs/<setting>/<overrides>), resuming where a previous identical run stopped."""

import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .cli import entry, one_line_errors
from .estimation.device import keep_freed_memory, match_threads_to_job
from .settings.configs import CONF_DIR, register_resolvers
from .settings.setting import load_setting
from .study.monitor import Monitor
from .study.report import record_run, terminal_table, write_report
from .study.sweep import run_study


def run_experiment(cfg: DictConfig, out_dir) -> dict:
    """Run the sweep of ``cfg`` into out_dir and write every output; returns the slope summary."""
    out_dir = Path(out_dir)
    start = time.perf_counter()
    monitor = None
    if cfg.monitor.tensorboard:
        monitor = Monitor(out_dir / "tensorboard", cfg.monitor.trace, cfg.monitor.trace_fits, config=cfg)
    try:
        results = run_study(cfg, out_dir, monitor)
        rows = [r for r in results.rows if r["setting"] == cfg.setting.name and r["seed"] == int(cfg.seed)]
        runs = record_run(out_dir, time.perf_counter() - start)
        summary, fig = write_report(rows, load_setting(cfg.setting), out_dir, runs=runs, method=cfg.fit.method)
        if monitor and monitor.logged:  # a rerun with nothing to fit logs nothing again
            hparams = {
                "setting": cfg.setting.name,
                "method": cfg.fit.method,
                "mstep": cfg.fit.get("mstep", ""),
                "reps": int(cfg.sweep.reps),
                "seed": int(cfg.seed),
                "init": cfg.init.policy,
            }
            monitor.log_summary(summary, fig, hparams, step=len(rows))
    except KeyboardInterrupt:
        if out_dir.exists():
            record_run(out_dir, time.perf_counter() - start)
        raise
    finally:
        if monitor:
            monitor.close()
    print(terminal_table(summary))
    print(f"outputs in {out_dir}")
    return summary


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
@one_line_errors
def main(cfg: DictConfig) -> None:
    register_resolvers()
    match_threads_to_job()
    keep_freed_memory()
    run_experiment(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    entry(main)
