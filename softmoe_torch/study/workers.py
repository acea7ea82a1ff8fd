"""Batches of fits run in worker processes, so that a sweep uses every core it may.

A batch is fitted by the same call in a worker as in the parent (``sweep.batch_plan`` cuts
sample sizes only along the groups that a fit computes alone), so the results do not depend
on the number of workers."""

import concurrent.futures as cf
import multiprocessing
import os
import signal
import time

import torch

PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal a process gets when its parent dies


def _die_with_parent(parent: int):
    """On Linux, have the kernel SIGTERM this process when its parent dies (a killed sweep leaves
    no worker behind), and exit now if it died already; elsewhere nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request above
        os._exit(1)


_INDEX = {}  # in a worker process: its number among the pool's workers, in the order they started


def worker_index() -> int | None:
    """This process's number among the workers of ``run_batches`` (0, 1, ... in the order they
    started); None outside them."""
    return _INDEX.get("index")


def _start_worker(parent: int, threads: int, counter, init, init_args):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent(parent)
    torch.set_num_threads(threads)
    with counter.get_lock():
        _INDEX["index"], counter.value = counter.value, counter.value + 1
    if init is not None:
        init(*init_args)


def run_batches(task, batches, workers: int, started, init=None, init_args=()):
    """Run task(n, reps) for each (n, reps) of ``batches``; a generator of (n, reps, output,
    seconds) in the order the batches finish. ``started(n, reps)`` is called as each starts.

    With workers > 1, at most that many batches run at once, in the given order, each in a worker
    process (spawned; ``init(*init_args)`` runs once in each, which has torch.get_num_threads() //
    workers threads and its ``worker_index``). ``task`` and ``init`` must be importable module-level
    functions. Closing the generator (or an exception in it) stops every worker at once."""
    if workers <= 1:
        for n, reps in batches:
            started(n, reps)
            start = time.perf_counter()
            output = task(n, reps)
            yield n, reps, output, time.perf_counter() - start
        return
    queue = list(batches)
    threads = max(1, torch.get_num_threads() // workers)
    context = multiprocessing.get_context("spawn")
    pool = cf.ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_start_worker,
        initargs=(os.getpid(), threads, context.Value("i", 0), init, init_args),
    )
    running = {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                n, reps = queue.pop(0)
                started(n, reps)
                running[pool.submit(task, n, reps)] = (n, reps, time.perf_counter())
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                n, reps, start = running.pop(future)
                yield n, reps, future.result(), time.perf_counter() - start
    finally:
        for proc in list((pool._processes or {}).values()):  # Python < 3.14 has no public way to stop busy workers
            proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
