"""The sweep's progress bar. Its unit is work (the sample size n summed over fits), it moves
within a batch, and its ETA comes from a cost model fitted to the batches already done."""
import threading
import time

import numpy as np
from tqdm import tqdm

FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} n*fits [{elapsed}{postfix}]"


def per_fit_seconds(history, n: int) -> float:
    """Predicted seconds of one fit at sample size n from finished batches [(n, fits, seconds)]
    (non-empty): a power law a n^b through the last four, b in [0, 1.5] (b = 1 with one size)."""
    recent = history[-4:]
    logn = np.log([h[0] for h in recent])
    logt = np.log([max(h[2], 1e-9) / h[1] for h in recent])
    b = 1.0 if np.ptp(logn) == 0 else float(np.clip(np.polyfit(logn, logt, 1)[0], 0.0, 1.5))
    return float(np.exp(np.mean(logt - b * logn)) * n**b)


def clock(seconds) -> str:
    """Seconds -> 'H:MM:SS' or 'MM:SS'; None -> '?'."""
    return "?" if seconds is None else tqdm.format_interval(seconds)


class WorkBar:
    """Progress hook for ``run_study``: ``bar(n, reps, None)`` as a batch of fits at size n starts,
    ``bar(n, reps, seconds)`` when it ends. ``plan``: the batches [(n, number of fits)];
    ``workers``: how many batches run at once (each on its own core)."""

    def __init__(self, plan, desc: str, disable: bool = False, tick: float = 0.5, workers: int = 1):
        self.plan = list(plan)
        self.workers = workers
        self.history = []
        self.done = 0
        self.running = {}  # n -> (fits, start time) of the batches in flight
        self.lock = threading.Lock()
        self.bar = tqdm(total=sum(n * k for n, k in self.plan), desc=desc, disable=disable,
                        unit_scale=True, bar_format=FORMAT, postfix="eta ?")
        self.stop = threading.Event()
        self.ticker = None if disable else threading.Thread(target=self._tick, args=(tick,), daemon=True)
        if self.ticker:
            self.ticker.start()

    def __call__(self, n: int, reps, seconds=None):
        with self.lock:
            if seconds is None:
                self.running[n] = (len(reps), time.perf_counter())
            else:
                self.history.append((n, len(reps), seconds))
                self.plan.remove((n, len(reps)))
                self.done += n * len(reps)
                self.running.pop(n, None)
            self._show()

    def eta(self) -> float | None:
        """Seconds left: the rest of the batches in flight and every planned batch, predicted,
        shared among the workers."""
        if not self.history:
            return None
        now, left = time.perf_counter(), 0.0
        for n, k in self.plan:
            predicted = per_fit_seconds(self.history, n) * k
            if n in self.running:
                predicted = max(predicted - (now - self.running[n][1]), 0.0)
            left += predicted
        return left / self.workers

    def _show(self):
        shown = self.done
        if self.history:  # interpolate within the batches in flight, never past 95% of one
            for n, (k, start) in self.running.items():
                share = (time.perf_counter() - start) / (per_fit_seconds(self.history, n) * k)
                shown += min(share, 0.95) * n * k
        n_now = "".join(f"n={n}, " for n in self.running)
        self.bar.n = shown
        self.bar.set_postfix_str(f"{n_now}eta {clock(self.eta())}", refresh=False)
        self.bar.refresh()

    def _tick(self, every: float):
        while not self.stop.wait(every):
            with self.lock:
                self._show()

    def close(self):
        self.stop.set()
        if self.ticker:
            self.ticker.join()
        self.bar.close()
