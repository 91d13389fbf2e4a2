"""Cost of a full-query analysis of one NL block at COCO scale, against the bare forward.

Model: ResNet-50 up to res4 with an embedded-Gaussian NL block (1024 channels) before the last
block of res4, on an 800 x 1344 input: the NL block sees 50 x 84 = 4,200 positions (N = N_key).
Measured in the same run, each configuration in its own subprocess (peak RSS is per process):

* ``bare``      -- the model's forward alone;
* ``analysis``  -- the forward under ``Capture`` computing the three cosine statistics, entropy,
                   max weight and zero rows over all N query maps (JSD off);
* ``with JSD``  -- the same plus 512 sampled query pairs for the JSD.

Prints time ratios (median of repeats) and the extra peak memory against two N x N float32 maps.
Target: analysis <= 1.25x the bare forward, extra peak memory < bare + 2 N^2 float32.

Run: ``python benchmarks/capture.py [--repeats 3] [--size 800 1344]``.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def child(config: str, repeats: int, size: tuple[int, int]) -> None:
    import torch

    from nlanalysis.capture import Capture
    from nlanalysis.examples import example_model

    torch.set_grad_enabled(False)
    model = example_model("embedded_gaussian")
    x = torch.randn(1, 3, *size)
    model(x)  # warm-up (allocator, kernels)
    rss_before = _rss_mib()
    times = []
    n = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        if config == "bare":
            model(x)
        else:
            with Capture(model, jsd_pairs=512 if config == "jsd" else 0, keep_records=True) as cap:
                model(x)
            n = cap.records[0].stats.n_query[0].item()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"times": times, "peak_extra_mib": peak - rss_before, "n": n}))


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1344))
    parser.add_argument("--child", choices=["bare", "analysis", "jsd"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeats, tuple(args.size))
        return
    results = {}
    for config in ("bare", "analysis", "jsd"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", config, "--repeats", str(args.repeats), "--size", *map(str, args.size)],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        results[config] = json.loads(out.strip().splitlines()[-1])
    n = results["analysis"]["n"]
    two_maps_mib = 2 * n * n * 4 / 2**20
    bare = statistics.median(results["bare"]["times"])
    print(f"input {args.size[0]}x{args.size[1]}, NL block N = N_key = {n}, repeats {args.repeats} (median)")
    print(f"{'config':<10} {'time s':>8} {'ratio':>7} {'peak extra MiB':>15}")
    for config, label in (("bare", "bare"), ("analysis", "analysis"), ("jsd", "with JSD")):
        t = statistics.median(results[config]["times"])
        print(f"{label:<10} {t:8.3f} {t / bare:7.3f} {results[config]['peak_extra_mib']:15.1f}")
    extra = results["analysis"]["peak_extra_mib"] - results["bare"]["peak_extra_mib"]
    ratio = statistics.median(results["analysis"]["times"]) / bare
    print(f"analysis overhead: {100 * (ratio - 1):.1f}% of the bare forward (target <= 25%)")
    print(f"analysis extra peak memory over bare: {extra:.1f} MiB; two N x N float32 maps: {two_maps_mib:.1f} MiB")


if __name__ == "__main__":
    main()
