"""Benchmark: exact O(N*D) mean pairwise cosine distance vs pdist vs a dense N x N matrix.

GCNet (arXiv 1904.11492, Sec. 3) averages the cosine distance over all N^2
ordered pairs of positions. :func:`nlanalysis.metrics.mean_pairwise_cosine_distance`
gets it from ||sum_i v_i/||v_i|| ||^2 in O(N*D) time and O(chunk*D) memory; this
script compares it, in one run, with

* ``pdist``: ``scipy.spatial.distance.pdist(v, "cosine")`` turned into the
  all-ordered-pairs mean ``2 * sum(pdist) / N^2`` (i = j pairs add 0);
* ``dense``: a float64 N x N torch cosine matrix ``1 - U U^T``, averaged.

Cases: N in {1000, 4200}, with D = 1024 ("features", ReLU features with a shared
component) and D = N ("attention", softmax rows that are nearly the same for
every query, the regime GCNet reports).

Time: best of up to ``--repeats`` warm runs (``time.perf_counter``), after one
cold run. Memory: peak resident-set growth of a fresh worker process during the
cold run (after one call on an 8 x 8 input, so lazy library set-up is not
counted; Linux ``/proc/self/clear_refs`` resets VmHWM, then VmHWM - VmRSS
before), so numpy, scipy and torch allocations are measured the same way. Each
(method, case) runs in its own subprocess; torch uses ``--threads`` threads
(default 1; pdist is single-threaded).

Usage: ``python benchmarks/metrics.py [--sizes 1000 4200] [--repeats 5] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

METHODS = ("ours", "pdist", "dense")


def make_data(kind: str, n: int, d: int) -> np.ndarray:
    """Deterministic float32 test vectors ``[n, d]``."""
    rng = np.random.default_rng(1000 * n + d + (0 if kind == "features" else 1))
    if kind == "features":
        shared = rng.standard_normal(d, dtype=np.float32)
        x = rng.standard_normal((n, d), dtype=np.float32)
        x += shared
        np.maximum(x, 0, out=x)
        return x
    logits = rng.standard_normal((n, d), dtype=np.float32)
    logits *= 0.3
    logits += 3.0 * rng.standard_normal(d, dtype=np.float32)  # one shared map + small per-query part
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits


def _proc_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _run_method(method: str, v: np.ndarray):
    """Return a callable computing the all-ordered-pairs mean cosine distance."""
    if method == "ours":
        import torch

        from nlanalysis.metrics import mean_pairwise_cosine_distance

        t = torch.from_numpy(v)
        return lambda: float(mean_pairwise_cosine_distance(t))
    if method == "pdist":
        from scipy.spatial.distance import pdist

        n = v.shape[0]
        return lambda: float(2.0 * pdist(v, "cosine").sum() / (n * n))
    if method == "dense":
        import torch

        t = torch.from_numpy(v)

        def dense() -> float:
            u = t.to(torch.float64)
            u = u / torch.linalg.vector_norm(u, dim=1, keepdim=True)
            return float((1.0 - u @ u.T).mean())

        return dense
    raise ValueError(method)


def worker(method: str, kind: str, n: int, d: int, repeats: int, threads: int, budget_s: float) -> dict:
    import torch

    torch.set_num_threads(threads)
    _run_method(method, make_data(kind, 8, 8))()  # lazy library init is not the method's memory
    v = make_data(kind, n, d)
    fn = _run_method(method, v)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
        rss0 = _proc_kib("VmRSS")
        value = fn()
        peak_kib = _proc_kib("VmHWM") - rss0
    except OSError:
        value, peak_kib = fn(), -1
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"value": value, "best_s": min(times), "runs": len(times), "peak_mib": peak_kib / 1024}


def run_case(method: str, kind: str, n: int, d: int, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", method, kind, str(n), str(d),
        "--repeats", str(args.repeats), "--threads", str(args.threads), "--budget", str(args.budget),
    ]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4200])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", type=float, default=10.0, help="seconds of warm timing per case before stopping early")
    ap.add_argument("--worker", nargs=4, metavar=("METHOD", "KIND", "N", "D"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        method, kind, n, d = args.worker
        print(json.dumps(worker(method, kind, int(n), int(d), args.repeats, args.threads, args.budget)))
        return

    import scipy
    import torch

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, scipy {scipy.__version__}, numpy {np.__version__}")
    print(f"torch threads: {args.threads}; pdist: single-threaded; input float32; results float64")
    print("time: best of up to %d warm runs; memory: peak RSS growth of a fresh process during one cold run" % args.repeats)
    print()
    header = (
        f"{'case':<24}{'method':<7}{'time ms':>11}{'runs':>5}{'peak MiB':>10}"
        f"{'value':>22}{'|diff| vs ours':>16}{'time/ours':>11}{'mem/ours':>10}"
    )
    print(header)
    print("-" * len(header))
    worst = {"speedup_vs_pdist": math.inf, "max_abs_diff": 0.0}
    for n in args.sizes:
        for kind, d in (("features", 1024), ("attention", n)):
            res = {m: run_case(m, kind, n, d, args) for m in METHODS}
            ours = res["ours"]
            for m in METHODS:
                r = res[m]
                diff = abs(r["value"] - ours["value"])
                mem_ratio = r["peak_mib"] / ours["peak_mib"] if ours["peak_mib"] > 0 else math.nan
                print(
                    f"{f'{kind} N={n} D={d}':<24}{m:<7}{1e3 * r['best_s']:>11.3f}{r['runs']:>5}{r['peak_mib']:>10.1f}"
                    f"{r['value']:>22.15g}{diff:>16.2e}{r['best_s'] / ours['best_s']:>11.1f}{mem_ratio:>10.1f}"
                )
                worst["max_abs_diff"] = max(worst["max_abs_diff"], diff)
            if n >= 4200:
                worst["speedup_vs_pdist"] = min(worst["speedup_vs_pdist"], res["pdist"]["best_s"] / ours["best_s"])
            print()
    if math.isfinite(worst["speedup_vs_pdist"]):
        ok = worst["speedup_vs_pdist"] >= 200
        print(f"target >= 200x faster than pdist at N >= 4200: worst {worst['speedup_vs_pdist']:.0f}x -> {'met' if ok else 'NOT met'}")
    ok = worst["max_abs_diff"] <= 1e-6
    print(f"target equal to 1e-6: max |diff| {worst['max_abs_diff']:.2e} -> {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
