"""The sweep's progress bar. Its unit is work (the sample size n summed over fits), it moves
within a batch, and its ETA comes from a cost model fitted to the batches already done."""

import heapq
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
    ``bar(n, reps, seconds)`` when it ends. ``plan``: the batches [(n, number of fits)] in order
    (several may share an n); ``workers``: how many batches run at once (each on its own core)."""

    def __init__(self, plan, desc: str, disable: bool = False, tick: float = 0.5, workers: int = 1):
        self.plan = list(plan)
        self.workers = workers
        self.history = []
        self.done = 0
        self.running = {}  # (n, replications) -> start time of the batches in flight
        self.lock = threading.Lock()
        self.bar = tqdm(
            total=sum(n * k for n, k in self.plan),
            desc=desc,
            disable=disable,
            unit_scale=True,
            bar_format=FORMAT,
            postfix="eta ?",
        )
        self.stop = threading.Event()
        self.ticker = None if disable else threading.Thread(target=self._tick, args=(tick,), daemon=True)
        if self.ticker:
            self.ticker.start()

    def __call__(self, n: int, reps, seconds=None):
        with self.lock:
            key = (n, tuple(reps))
            if seconds is None:
                self.running[key] = time.perf_counter()
            else:
                self.history.append((n, len(reps), seconds))
                self.plan.remove((n, len(reps)))
                self.done += n * len(reps)
                self.running.pop(key, None)
            self._show()

    def eta(self) -> float | None:
        """Seconds left: each batch's predicted time (the rest of it for those in flight), laid
        out on the workers as they free up, in the order planned (as ``run_batches`` takes them)."""
        if not self.history:
            return None
        now, free, queued = time.perf_counter(), [], list(self.plan)
        for (n, reps), start in self.running.items():
            queued.remove((n, len(reps)))
            free.append(max(per_fit_seconds(self.history, n) * len(reps) - (now - start), 0.0))
        free += [0.0] * max(self.workers - len(free), 0)
        heapq.heapify(free)
        for n, k in queued:
            heapq.heappush(free, heapq.heappop(free) + per_fit_seconds(self.history, n) * k)
        return max(free)

    def _show(self):
        shown = self.done
        if self.history:  # interpolate within the batches in flight, never past 95% of one
            for (n, reps), start in self.running.items():
                share = (time.perf_counter() - start) / (per_fit_seconds(self.history, n) * len(reps))
                shown += min(share, 0.95) * n * len(reps)
        n_now = "".join(f"n={n}, " for n in dict.fromkeys(n for n, _ in self.running))
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
