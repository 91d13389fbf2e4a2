"""The intra-op thread count of the eager statistics: one thread, so a busy machine causes no cliff.

The eager statistics (the cosine accumulator, the float64 JSD of sampled pairs, entropies) are
sums over rows: memory-bound passes of a few milliseconds each. At torch's default of one thread
per core every such op ends on an OpenMP barrier, and when another process holds one of the cores
each barrier waits a scheduler time slice for the descheduled thread: issue 18 measured
:func:`~nlanalysis.metrics.mean_pairwise_cosine_distance` on a 4,200 x 4,200 map at 27.7 ms quiet
and 1,070 ms beside busy neighbours with 2 threads, 25 ms with 1. One thread is somewhat slower on a
quiet machine (benchmarks/contention.py on 2 cores: 36 vs 26 ms; the passes are mostly bound by memory)
and keeps its speed on a busy one (44 ms beside a busy-loop neighbour, against 155 ms at 2 threads), so
:func:`statistics_threads` runs them on one thread; torch's setting is restored on exit, and
everything else (the model's forward, the native kernels of :mod:`nlanalysis.kernels`, which do
one pass per map row block and balance their rows over torch's threads) keeps torch's threads.

``NLANALYSIS_STAT_THREADS`` overrides the count (``0``: leave torch's setting alone). Nested and
concurrent uses share one lock: the first entry sets the count, the last exit restores it.

Multi-threaded work that does gain from threads (a model's forward, the native kernels) is better
run on the cores that are free: :func:`free_cores` counts them (Linux: the usable CPUs less the tasks
of other processes runnable right now, ``/proc/loadavg``), and :func:`free_core_threads` caps torch's
threads at that number while it is open: :func:`nlanalysis.analyze` runs under it, and
``nlanalysis extract`` runs each forward under it (the count is read again per forward). On a
quiet machine it changes nothing; beside a busy neighbour it gives up the core the neighbour holds
instead of waiting for it at every barrier (benchmarks/contention.py). ``NLANALYSIS_FREE_CORES=0``
turns it off (torch's count is used as set).

The numbers do not depend on the thread count beyond float64 rounding: the native kernels compute
each row on one thread and add the threads' partial sums of a map (relative differences of ~1e-15
between 1, 2 and 3 threads, tests/test_threads.py); torch's own ops in the forward are as torch makes them.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["free_core_threads", "free_cores", "statistics_thread_count", "statistics_threads"]

_LOADAVG = "/proc/loadavg"  # "1.00 0.80 0.50 RUNNABLE/TASKS LASTPID" on Linux
_LOCK = threading.Lock()
_STATE = {"depth": 0, "saved": 0}


def statistics_thread_count() -> int:
    """Threads the eager statistics run on: ``$NLANALYSIS_STAT_THREADS`` (``0``: torch's), default 1."""
    raw = os.environ.get("NLANALYSIS_STAT_THREADS", "1").strip()
    try:
        count = int(raw)
    except ValueError:
        raise ValueError(f"NLANALYSIS_STAT_THREADS must be an integer >= 0, got {raw!r}") from None
    if count < 0:
        raise ValueError(f"NLANALYSIS_STAT_THREADS must be an integer >= 0, got {raw!r}")
    return count or torch.get_num_threads()


def _runnable_here() -> int:
    """Threads of this process that are runnable now (state ``R`` in ``/proc/self/task/*/stat``)."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                count += f.read().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            continue
    return count


def free_cores() -> int | None:
    """Usable CPUs less the runnable tasks of other processes right now (at least 1); None where the
    kernel does not say (not Linux)."""
    try:
        with open(_LOADAVG) as f:
            runnable = int(f.read().split()[3].split("/")[0])
        others = max(0, runnable - max(1, _runnable_here()))
    except (OSError, ValueError, IndexError):
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus - others)


@contextmanager
def free_core_threads() -> Iterator[int]:
    """Run the enclosed block on ``min(torch's threads, free_cores())`` threads (yielded); restored on exit.
    ``$NLANALYSIS_FREE_CORES`` ``0`` (or ``off``): torch's threads as found."""
    found = torch.get_num_threads()
    off = os.environ.get("NLANALYSIS_FREE_CORES", "1").strip().lower() in ("0", "off", "false", "no")
    free = None if off else free_cores()
    count = found if free is None else min(found, free)
    if count != found:
        torch.set_num_threads(count)
    try:
        yield count
    finally:
        if torch.get_num_threads() != found:
            torch.set_num_threads(found)


@contextmanager
def statistics_threads() -> Iterator[int]:
    """Run the enclosed eager statistics on :func:`statistics_thread_count` threads (yielded);
    torch's thread count is restored when the outermost use exits."""
    count = statistics_thread_count()
    with _LOCK:
        if _STATE["depth"] == 0:
            _STATE["saved"] = torch.get_num_threads()
            if count != _STATE["saved"]:
                torch.set_num_threads(count)
        _STATE["depth"] += 1
    try:
        yield torch.get_num_threads()
    finally:
        with _LOCK:
            _STATE["depth"] -= 1
            if _STATE["depth"] == 0 and torch.get_num_threads() != _STATE["saved"]:
                torch.set_num_threads(_STATE["saved"])
