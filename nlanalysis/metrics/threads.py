"""The intra-op thread count of the eager statistics: one thread, so a busy machine causes no cliff.

The eager statistics (the cosine accumulator, the float64 JSD of sampled pairs, entropies) are
sums over rows: memory-bound passes of a few milliseconds each. At torch's default of one thread
per core every such op ends on an OpenMP barrier, and when another process holds one of the cores
each barrier waits a scheduler time slice for the descheduled thread: issue 18 measured
:func:`~nlanalysis.metrics.mean_pairwise_cosine_distance` on a 4,200 x 4,200 map at 27.7 ms quiet
and 1,070 ms beside busy neighbours with 2 threads, 25 ms with 1. One thread is as fast on a quiet
machine (the passes are bound by memory, not arithmetic) and keeps its speed on a busy one, so
:func:`statistics_threads` runs them on one thread; torch's setting is restored on exit, and
everything else (the model's forward, the native kernels of :mod:`nlanalysis.kernels`, which do
one pass per map row block and balance their rows over torch's threads) keeps torch's threads.

``NLANALYSIS_STAT_THREADS`` overrides the count (``0``: leave torch's setting alone). Nested and
concurrent uses share one lock: the first entry sets the count, the last exit restores it.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["statistics_thread_count", "statistics_threads"]

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
