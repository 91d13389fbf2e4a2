"""The statistics on a busy machine: quiet vs beside busy-loop processes, by intra-op thread count.

Researchers run analyses on shared servers. Many small multi-threaded ops each end on an OpenMP
barrier; when a busy neighbour holds one of the cores, every barrier waits for the descheduled
thread and the analysis falls off a cliff (issue 18: a metric 27.7 ms quiet, 1,070 ms beside heavy
neighbours). Workloads:

* ``metric``  -- :func:`nlanalysis.metrics.mean_pairwise_cosine_distance` on a 4,200 x 4,200 float32
                 map (softmax rows, the res4 scale of COCO);
* ``analyze`` -- :func:`nlanalysis.analyze` of the shipped trained ``embedded_gaussian`` scene model on
                 8 demo scenes (its forward and the statistics of its NL block, default JSD pairs);
* ``control`` -- not the library: one thread summing the same map in float64 and multiplying two
                 384 x 384 matrices, with no barrier anywhere. What a busy neighbour does to this is
                 what the machine (the hypervisor, shared caches, clocks) does to any one-thread work,
                 so a workload's busy/quiet ratio is read against it, not against 1.

Conditions, interleaved per repetition: ``quiet`` and ``busy`` (``--neighbours`` processes spinning
``while True: pass``, started by this script, each pinned to one core, counting down from the last,
and killed at the end), each with torch at 1 thread, at all threads (``os.cpu_count()``), and with
torch's threads left as found and the library's own policy deciding (``policy``: the eager statistics on
one thread, and :func:`nlanalysis.analyze` capping torch's threads at the free cores,
:mod:`nlanalysis.metrics.threads`); ``no free`` sets ``NLANALYSIS_FREE_CORES=0`` (analyze keeps torch's
threads, as before it used the free cores); ``no policy`` sets ``NLANALYSIS_STAT_THREADS=0`` too so the
statistics run on torch's threads, as before issue 18. Prints medians and
the busy / quiet ratio per workload and thread setting, with ``uptime`` before and after (a machine
others use: say what else ran). Target: busy within 1.5x of quiet.

Run: ``python benchmarks/contention.py [--repeats 5] [--neighbours 1] [--quick]``.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import time
from collections.abc import Callable


def spin(core: int) -> None:
    """A busy neighbour: one core, forever (killed by the parent)."""
    try:
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError):
        pass
    while True:
        pass


class Neighbours:
    """``count`` busy-loop processes while the context is open (killed on exit, even after an error)."""

    def __init__(self, count: int) -> None:
        self.count, self.procs = count, []

    def __enter__(self) -> Neighbours:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        ctx = mp.get_context("spawn")
        for i in range(self.count):
            p = ctx.Process(target=spin, args=(cores[-1 - i % len(cores)],), daemon=True)
            p.start()
            self.procs.append(p)
        time.sleep(0.3)  # let them reach their loop and the scheduler see them
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.join()
        self.procs.clear()


def metric_workload() -> Callable[[], object]:
    import torch

    from nlanalysis.metrics import mean_pairwise_cosine_distance

    maps = torch.randn(4200, 4200, generator=torch.Generator().manual_seed(0)).mul_(0.05).softmax(-1)
    return lambda: mean_pairwise_cosine_distance(maps)


def control_workload() -> Callable[[], object]:
    import torch

    maps = torch.randn(4200, 4200, generator=torch.Generator().manual_seed(0))
    a = torch.randn(384, 384, generator=torch.Generator().manual_seed(1))

    def run() -> object:
        found = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return maps.sum(dtype=torch.float64).item() + (a @ a @ a).sum().item()
        finally:
            torch.set_num_threads(found)

    return run


def analyze_workload(scenes: int = 8) -> Callable[[], object]:
    import numpy as np
    import torch

    import nlanalysis
    from nlanalysis.checkpoints import load_checkpoint
    from nlanalysis.data.images import load_image
    from nlanalysis.data.scenes import demo_scenes_path
    from nlanalysis.train.run import shipped_checkpoints

    ckpt = load_checkpoint(shipped_checkpoints()["embedded_gaussian"])
    _, folder = demo_scenes_path()
    pixels = np.stack([load_image(p) for p in sorted(folder.glob("*.png"))[:scenes]]).astype(np.float32)
    pre = ckpt.preprocess
    x = (torch.from_numpy(pixels) - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    x = x.permute(0, 3, 1, 2).contiguous()
    return lambda: nlanalysis.analyze(ckpt.model, x)


def timed(f: Callable[[], object], setting: tuple[int | None, str | None, str | None]) -> float:
    """Seconds of one ``f()`` with torch at ``threads`` (None: as found), ``$NLANALYSIS_STAT_THREADS`` at ``stat``
    (None: unset, the library's policy; ``"0"``: the statistics keep torch's threads) and
    ``$NLANALYSIS_FREE_CORES`` at ``free`` (None: unset, analyze caps its threads at the free cores; ``"0"``: not)."""
    import torch

    threads, stat, free = setting
    found = torch.get_num_threads()
    saved = {k: os.environ.pop(k, None) for k in ("NLANALYSIS_STAT_THREADS", "NLANALYSIS_FREE_CORES")}
    for key, value in (("NLANALYSIS_STAT_THREADS", stat), ("NLANALYSIS_FREE_CORES", free)):
        if value is not None:
            os.environ[key] = value
    if threads and threads > 0:
        torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        f()
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(found)
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average %.2f %.2f %.2f" % os.getloadavg()


def measure(workloads: dict[str, Callable[[], object]], settings: dict[str, tuple[int | None, str | None, str | None]], repeats: int,
            neighbours: int) -> dict[tuple[str, str, str], list[float]]:  # fmt: skip
    """Seconds per (workload, thread setting, condition), conditions interleaved per repetition."""
    times: dict[tuple[str, str, str], list[float]] = {}
    for f in workloads.values():  # warm-up: kernels, allocator
        f()
    for rep in range(repeats):
        for condition in ("quiet", "busy") if rep % 2 == 0 else ("busy", "quiet"):
            with Neighbours(neighbours if condition == "busy" else 0):
                for wname, f in workloads.items():
                    for sname, setting in settings.items():
                        times.setdefault((wname, sname, condition), []).append(timed(f, setting))
    return times


def report(times: dict[tuple[str, str, str], list[float]], settings: dict) -> None:
    workloads = sorted({w for w, _, _ in times}, key=list(dict.fromkeys(w for w, _, _ in times)).index)
    print(f"{'workload':<9} {'threads':<22} {'quiet ms':>9} {'busy ms':>9} {'busy/quiet':>11}   (median; range of busy)")
    for w in workloads:
        for s in settings:
            quiet, busy = (times[(w, s, c)] for c in ("quiet", "busy"))
            q, b = statistics.median(quiet), statistics.median(busy)
            print(f"{w:<9} {s:<22} {1e3 * q:9.1f} {1e3 * b:9.1f} {b / q:10.2f}x   ({1e3 * min(busy):.1f}-{1e3 * max(busy):.1f})")
    if "control" in workloads and "policy" in settings:
        def ratio(w: str) -> float:
            return statistics.median(times[(w, "policy", "busy")]) / statistics.median(times[(w, "policy", "quiet")])

        print("busy/quiet against the control's (policy): " + ", ".join(
            f"{w} {ratio(w) / ratio('control'):.2f}x" for w in workloads if w != "control"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--neighbours", type=int, default=1, help="busy-loop processes beside the analysis")
    parser.add_argument("--quick", action="store_true", help="3 repetitions, the metric and the control only")
    parser.add_argument("--workloads", nargs="+", choices=("metric", "analyze", "control"),
                        default=("metric", "analyze", "control"))
    args = parser.parse_args()
    import torch

    torch.set_grad_enabled(False)
    cores = os.cpu_count() or 1
    settings = {"1, no policy": (1, "0", "0"), f"all ({cores}), no policy": (cores, "0", "0"),
                f"policy ({torch.get_num_threads()}), no free": (None, None, "0"), "policy": (None, None, None)}  # fmt: skip
    chosen = ("metric", "control") if args.quick else args.workloads
    workloads = {"metric": metric_workload, "analyze": analyze_workload, "control": control_workload}
    repeats = 3 if args.quick else args.repeats
    print(f"uptime before: {uptime()}")
    print(f"{cores} CPUs, {args.neighbours} busy neighbour(s), {repeats} repetitions, torch {torch.__version__}")
    times = measure({name: workloads[name]() for name in chosen}, settings, repeats, args.neighbours)
    report(times, settings)
    print(f"uptime after: {uptime()}")


if __name__ == "__main__":
    main()
