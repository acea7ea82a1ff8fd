"""Device and dtype selection: auto picks CUDA, then Apple MPS, then CPU; float64 by default,
float32 on MPS (which has no float64) with a one-time warning. ``keep_freed_memory``: the CPU
allocator setting the command-line entries use."""

import ctypes
import ctypes.util
import os
import warnings

import torch

_DTYPES = {"float64": torch.float64, "float32": torch.float32}
_warned_mps = False


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' -> torch.device; ValueError if unavailable."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or mps") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda was asked for but no CUDA GPU is available; use device=auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device=mps was asked for but Apple MPS is not available; use device=auto or cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'float64' | 'float32' -> torch dtype; on MPS float64 falls back to float32 (warned once)."""
    global _warned_mps
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use float64 or float32")
    if device.type == "mps" and name == "float64":
        if not _warned_mps:
            warnings.warn(
                "MPS has no float64: computing in float32 with looser tolerances", RuntimeWarning, stacklevel=2
            )
            _warned_mps = True
        return torch.float32
    return _DTYPES[name]


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
KEEP_BYTES = 4_000_000_000


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing every large block
    back to the system (by default blocks above 128 KB..32 MB are mmapped, unmapped at free and
    page-faulted in again at the next allocation). The fused evaluations allocate many n-long
    temporaries per call, so this halves their time at n = 1e5 (the numbers do not change); the
    process keeps its peak memory until it ends. Returns whether it was set (False without glibc)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES) and libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
    except (OSError, AttributeError):  # no C library found, or one without mallopt (not glibc)
        return False


def match_threads_to_job(environ=os.environ) -> int | None:
    """In a SLURM job, use as many torch threads as the job has CPUs (SLURM_CPUS_PER_TASK).

    The joblib launcher already gives each worker cores/n_jobs threads, but where a cluster does not
    pin a job to its cores torch counts every core of the node and oversubscribes it. An explicit
    OMP_NUM_THREADS wins. Returns the thread count set, or None when nothing was changed."""
    cpus = environ.get("SLURM_CPUS_PER_TASK", "")
    if not cpus.isdigit() or int(cpus) < 1 or environ.get("OMP_NUM_THREADS"):
        return None
    torch.set_num_threads(int(cpus))
    print(f"torch threads: {cpus} (SLURM_CPUS_PER_TASK)")
    return int(cpus)
