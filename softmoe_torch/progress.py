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
    """Progress hook for ``run_study``: ``bar(n, reps, None)`` before a batch of fits at size n,
    ``bar(n, reps, seconds)`` after it. ``plan``: the batches [(n, number of fits)] in order."""

    def __init__(self, plan, desc: str, disable: bool = False, tick: float = 0.5):
        self.plan = list(plan)
        self.history = []
        self.done = 0
        self.current = None  # (n, fits, start time) of the batch in flight
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
                self.current = (n, len(reps), time.perf_counter())
            else:
                self.history.append((n, len(reps), seconds))
                self.plan.pop(0)
                self.done += n * len(reps)
                self.current = None
            self._show()

    def eta(self) -> float | None:
        """Seconds left: the rest of the batch in flight and every planned batch, predicted."""
        if not self.history:
            return None
        left = 0.0
        for i, (n, k) in enumerate(self.plan):
            predicted = per_fit_seconds(self.history, n) * k
            if i == 0 and self.current:
                predicted = max(predicted - (time.perf_counter() - self.current[2]), 0.0)
            left += predicted
        return left

    def _show(self):
        shown = self.done
        if self.current and self.history:  # interpolate within the batch, never past 95% of it
            n, k, start = self.current
            share = (time.perf_counter() - start) / (per_fit_seconds(self.history, n) * k)
            shown += min(share, 0.95) * n * k
        n_now = f"n={self.current[0]}, " if self.current else ""
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
