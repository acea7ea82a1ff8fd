"""How right is the progress bar's ETA? Runs a sweep in-process with the bar, records the ETA
it shows after every batch, and prints its error against the true remaining time at 25/50/75%
of the work (n summed over fits).

    python experiments/benchmarks/eta_accuracy.py fit=direct sweep.reps=10 [more overrides]"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

# experiments/ on sys.path for the helpers every study shares (experiments/studykit.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import studykit  # noqa: E402

from softmoe_torch.study.config_checks import validate  # noqa: E402
from softmoe_torch.study.progress import WorkBar  # noqa: E402
from softmoe_torch.study.sweep import batch_plan, run_study  # noqa: E402


class Recorder(WorkBar):
    """A WorkBar that also records (elapsed, fraction of work done, shown ETA) after each batch."""

    def __init__(self, plan, desc, workers):
        super().__init__(plan, desc, workers=workers)
        self.start, self.total, self.log = time.perf_counter(), sum(n * k for n, k in plan), []

    def __call__(self, n, reps, seconds=None):
        super().__call__(n, reps, seconds)
        if seconds is not None:
            self.log.append((time.perf_counter() - self.start, self.done / self.total, self.eta()))


def main(overrides):
    cfg = studykit.compose(["monitor.tensorboard=false", *overrides])
    plan = validate(cfg)
    workers, todo = batch_plan(plan, [(n, plan.reps) for n in plan.sizes])  # as run_study plans it
    bar = Recorder([(n, len(reps)) for n, reps in todo], cfg.setting.name, workers)
    with tempfile.TemporaryDirectory() as out:
        run_study(cfg, out, progress=bar)
    bar.close()
    end = bar.log[-1][0]
    report = {
        "overrides": overrides,
        "workers": bar.workers,
        "total_seconds": round(end, 1),
        "load_average": os.getloadavg(),
        "at": {},
    }
    for q in (0.25, 0.5, 0.75):
        t, frac, eta = next(rec for rec in bar.log if rec[1] >= q)
        true = end - t
        report["at"][f"{q:.0%}"] = {
            "work_done": round(frac, 3),
            "elapsed": round(t, 1),
            "eta_shown": round(eta, 1),
            "true_remaining": round(true, 1),
            "error": f"{(eta - true) / true:+.0%}" if true > 0 else None,
        }  # None: reached at the very end
    report["batches"] = [(n, k, round(sec, 2)) for n, k, sec in bar.history]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        sys.exit(__doc__)
    main(sys.argv[1:])
