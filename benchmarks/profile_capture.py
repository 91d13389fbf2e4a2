"""Where the analysis's time goes beyond the bare forward: cProfile and torch.profiler of captured vs bare forwards.

Denormal floats are flushed to zero in every method, as the native kernels do (``--denormals``: left on; see
``benchmarks/capture.py``).

Deterministic tools rather than wall ratios (issue 18): the thread count is fixed, and the tables report
per-forward milliseconds of

* torch ops (``torch.profiler``, self CPU time per op name, captured minus bare: what the analysis adds
  in torch and in the native kernels, which run inside ``nlanalysis`` frames and show as Python there);
* Python functions of ``nlanalysis`` (``cProfile``, total time inside each, per forward), the per-layer glue.

Targets: ``nl`` -- ResNet-50 to layer3 + mmcv ``NonLocal2d(1024, embedded_gaussian)`` (``benchmarks/capture.py``'s
model), or ``block`` -- that NL block alone on the layer3 features (its overhead without the 2 s of ResNet
around it), at ``--size H W``; ``vit`` -- the ViT-S/14 at 224, batch 1 (``benchmarks/capture.py``'s ViT row).

Run: ``python benchmarks/profile_capture.py --target nl --size 512 704 --threads 1 [--jsd 512] [--forwards 3]``;
``--times 30`` only times 30 interleaved (bare, captured) pairs (min and median, wall and CPU);
``--analysis-threads 1`` runs the statistics in the hooks on one thread while the model keeps ``--threads``.

``--target suite --times 200``: the native row pass alone (``nlanalysis.kernels.row_stats``) on one ViT-S/14 layer
(batch 1, 6 heads, a class token and 16 x 16 patches, random logits), without the cheap suite and with each of its
parts (``dnl``: the DNL split, ``spatial``: NMI, distances and local masses, ``cross``: rows kept and compared with
the previous layer's) and all of them, interleaved call by call: min and median ms per call.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
from collections import defaultdict
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(__file__))


def _nl(size: tuple[int, int], jsd: int, block_only: bool, level: str) -> tuple[Callable[[], object], Callable[[], object]]:
    import torch

    from capture import nl_model
    from nlanalysis.capture import Capture

    model = nl_model("cpu")
    x = torch.randn(1, 3, *size)
    if block_only:
        x = model[:-1](x)
        model = torch.nn.Sequential(model[-1])

    def captured() -> object:
        with Capture(model, jsd_pairs=jsd, query_dependence=level, keep_records=False, on_record=lambda r: None):
            return model(x)

    return (lambda: model(x)), captured


def _vit(jsd: int, level: str) -> tuple[Callable[[], object], Callable[[], object]]:
    import timm

    from nlanalysis.data.images import sample_photos
    from nlanalysis.vit import ViTCapture, preprocess_batch

    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224).eval()
    x, valid, _ = preprocess_batch(dict(list(sample_photos().items())[:1]), 224, "pad")

    def captured() -> object:
        with ViTCapture(model, jsd_pairs=jsd, query_dependence=level, keep_records=False, on_record=lambda r: None) as cap:
            cap.set_valid(valid)
            return model(x)

    return (lambda: model(x)), captured


def suite_times(repeats: int) -> str:
    """Min and median ms per :func:`~nlanalysis.kernels.row_stats` call on one ViT-S/14 layer, without the cheap suite and
    with each part of it (interleaved: each round calls every variant once)."""
    import inspect
    import statistics
    import time

    import torch

    from nlanalysis import kernels
    from nlanalysis.measure.query_dep import grid_centres

    b, h, n = 1, 6, 257  # 1 class token + 16 x 16 patches; the layer's model call: every row softmaxed in place
    logits = torch.randn(b, h, n, n, generator=torch.Generator().manual_seed(0)) * 10
    buf, pos = torch.empty_like(logits), grid_centres((16, 16), (14.0, 14.0))
    rows = [torch.zeros(b, h + 1, n - 1, n) for _ in range(2)]
    norms = [torch.zeros(b, h + 1, n - 1, dtype=torch.float64) for _ in range(2)]
    parts = {"none": (), "dnl": ("dnl",), "spatial": ("spatial",), "cross": ("cross",), "all": ("dnl", "spatial", "cross")}
    # the kept rows' norms passed on where SuiteSums takes them (so that PYTHONPATH may point at an older checkout: A/B)
    with_norms = "keep_norms" in inspect.signature(kernels.SuiteSums).parameters

    def call(on: tuple[str, ...], k: int) -> float:
        kw: dict = dict(unary="logits" if "dnl" in on else None, spatial="spatial" in on)
        if "spatial" in on:
            kw.update(query_pos=pos, key_pos=pos, reach=(21.0, 21.0))
        if "cross" in on:  # this layer's rows kept, the previous call's compared
            kw.update(keep=rows[k % 2], previous=rows[1 - k % 2])
            if with_norms:
                kw.update(keep_norms=norms[k % 2], previous_norms=norms[1 - k % 2])
        suite = kernels.SuiteSums(b, h, h + 1, n, spatial_from=1, **kw) if on else None
        buf.copy_(logits)
        start = time.perf_counter()
        kernels.row_stats(buf, None, None, 0, 1, scale=0.125, probs=buf, pre=1, suite=suite)
        return time.perf_counter() - start

    got: dict[str, list[float]] = {name: [] for name in parts}
    for k in range(repeats + 2):
        for name, on in parts.items():
            t = call(on, k)
            if k >= 2:  # two rounds of warm-up (the kept rows of the first call compare with zeros)
                got[name].append(t * 1e3)
    return "\n".join(f"{name:8s} min {min(t):6.3f} ms, median {statistics.median(t):6.3f} ms" for name, t in got.items())


def op_table(f: Callable[[], object], forwards: int) -> dict[str, float]:
    """Self CPU milliseconds per forward of each torch op name over ``forwards`` calls of ``f``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(forwards):
            f()
    out: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        out[event.key] += event.self_cpu_time_total / 1000 / forwards
    return out


def python_table(f: Callable[[], object], forwards: int) -> list[tuple[str, int, float, float]]:
    """``(function, calls per forward, own ms, cumulative ms per forward)`` of the ``nlanalysis`` functions."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(forwards):
        f()
    prof.disable()
    rows = []
    for (path, line, name), (cc, nc, tt, ct, _) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        if "nlanalysis" in path or path.startswith("<") or "torch/overrides" in path or "torch/nn/modules/module" in path:
            where = path.split("nlanalysis/")[-1] if "nlanalysis/" in path else os.path.basename(path)
            rows.append((f"{where}:{line}({name})", nc // forwards, tt * 1000 / forwards, ct * 1000 / forwards))
    return sorted(rows, key=lambda r: -r[3])


def analysis_on_threads(count: int) -> None:
    """Run the ViT layers' statistics (``attend`` in the shared softmax, ``measure_heads`` in the record) and the NL
    blocks' (``measure_block``, the in-pass kernels) on ``count`` torch threads while the model keeps its own: an
    experiment for a quiet machine (does the analysis at batch 1 gain from the second thread, or only wait at barriers?)."""
    import functools

    import torch

    from nlanalysis.capture import blocks, heads, inpass_blocks

    def on(f: Callable) -> Callable:
        @functools.wraps(f)
        def run(*a: object, **k: object) -> object:
            found = torch.get_num_threads()
            torch.set_num_threads(count)
            try:
                return f(*a, **k)
            finally:
                torch.set_num_threads(found)

        return run

    for module, names in ((heads, ("attend", "measure_heads")), (blocks, ("measure_block",)),
                          (inpass_blocks, ("softmax_block", "attend_block", "formed_block"))):  # fmt: skip
        for name in names:
            setattr(module, name, on(getattr(module, name)))


def paired_times(bare: Callable[[], object], captured: Callable[[], object], repeats: int) -> str:
    """Min and median of each one's wall and process-CPU seconds over ``repeats`` interleaved pairs, and the
    captured one's extra milliseconds (min to min: the least disturbed run of each)."""
    import statistics
    import time

    got: dict[str, list[tuple[float, float]]] = {"bare": [], "captured": []}
    for rep in range(repeats):
        for name in ("bare", "captured") if rep % 2 == 0 else ("captured", "bare"):
            w, c = time.perf_counter(), time.process_time()
            (bare if name == "bare" else captured)()
            got[name].append((time.perf_counter() - w, time.process_time() - c))
    lines = []
    for i, what in enumerate(("wall", "cpu")):
        b, c = ([t[i] for t in got[k]] for k in ("bare", "captured"))
        lines.append(f"{what}: bare min {min(b) * 1e3:.1f} ms (median {statistics.median(b) * 1e3:.1f}), captured min "
                     f"{min(c) * 1e3:.1f} ms (median {statistics.median(c) * 1e3:.1f}); extra {(min(c) - min(b)) * 1e3:+.1f} ms "
                     f"= {min(c) / min(b):.3f}x (min/min), medians {statistics.median(c) / statistics.median(b):.3f}x")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=("nl", "block", "vit", "suite"), default="nl")
    parser.add_argument("--size", nargs=2, type=int, default=(512, 704))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jsd", type=int, default=0, help="JSD pairs (0: none)")
    parser.add_argument("--query-dependence", default="cheap", choices=("off", "cheap", "all"),
                        help="the capture's query-dependence suite (default: cheap, the package's default)")
    parser.add_argument("--forwards", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--denormals", action="store_true",
                        help="leave denormal floats as the CPU makes them (default: flushed to zero in every method, as "
                             "the native kernels do; with random weights torch's softmax writes denormals that slow the "
                             "bare forward's next matmul ~5x and would flatter every ratio)")
    parser.add_argument("--times", type=int, default=0, help="only time N interleaved pairs (no profilers)")
    parser.add_argument("--analysis-threads", type=int, default=0,
                        help="run the statistics in the hooks on this many threads (0: torch's, as the package does)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    torch.set_flush_denormal(not args.denormals)
    if args.analysis_threads:
        analysis_on_threads(args.analysis_threads)
    if args.target == "suite":
        print(f"the native row pass on one ViT-S/14 layer, {torch.get_num_threads()} threads, load average {os.getloadavg()}")
        print(suite_times(args.times or 100))
        return
    level = args.query_dependence
    bare, captured = _vit(args.jsd, level) if args.target == "vit" else _nl(tuple(args.size), args.jsd, args.target == "block", level)
    for f in (bare, captured, bare, captured):  # warm-up: kernels built, allocator, caches
        f()
    print(f"target {args.target} {'' if args.target == 'vit' else args.size}, {torch.get_num_threads()} threads, "
          f"jsd {args.jsd}, suite {args.query_dependence}, {args.forwards} forwards, load average {os.getloadavg()}")  # fmt: skip
    if args.times:
        print(paired_times(bare, captured, args.times))
        return
    ops_bare, ops_cap = op_table(bare, args.forwards), op_table(captured, args.forwards)
    total_bare, total_cap = sum(ops_bare.values()), sum(ops_cap.values())
    print(f"\ntorch ops, self CPU ms per forward: bare {total_bare:.1f}, captured {total_cap:.1f} (+{total_cap - total_bare:.1f})")
    diff = sorted(((ops_cap.get(k, 0) - ops_bare.get(k, 0), k) for k in set(ops_bare) | set(ops_cap)), reverse=True)
    for d, k in diff[: args.top] + diff[-5:]:
        if abs(d) >= 0.05:
            print(f"  {d:+9.2f}  {k}  (bare {ops_bare.get(k, 0):.2f}, captured {ops_cap.get(k, 0):.2f})")
    print("\nPython (cProfile), per captured forward: calls, own ms, cumulative ms")
    for name, calls, own, cum in python_table(captured, args.forwards)[: args.top]:
        print(f"  {calls:6d} {own:9.2f} {cum:9.2f}  {name}")


if __name__ == "__main__":
    main()
