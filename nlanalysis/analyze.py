"""One call from images to a table: run a model under the capture of its attention sites.

:func:`analyze` measures the NL/GC blocks of a CNN (:class:`~nlanalysis.capture.Capture`) and the
self-attention layers of a ViT (:class:`~nlanalysis.capture.heads.ViTCapture`) alike, and
:func:`records_to_frame` turns either kind of :class:`~nlanalysis.capture.records.SiteRecord` into
rows. This is the Python API the CLI's ``analyze`` command and the notebooks use for in-memory
batches. For data sets use ``nlanalysis extract``, which streams results to disk.
"""
from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from .capture.blocks import BlockCapture, Capture, check_batch_args
from .capture.core import select_sites
from .capture.records import SiteRecord
from .measure.cross_site import CROSS_SITE, CrossSite, keep_options
from .measure.query_dep import DEFAULT_LEVEL
from .metrics.threads import free_core_threads
from .schema import NL, VIT, names, query_columns, statistic_columns

__all__ = ["STAT_COLUMNS", "analyze", "records_to_frame"]

#: statistic columns of an NL/GC block's rows, in order (:func:`nlanalysis.schema.statistic_columns`).
STAT_COLUMNS = statistic_columns(NL)

#: a site's row columns, in order: the image, the site's facts, its statistics, how they were made
FRAME_COLUMNS = {
    NL: ("image", "block", "use", "family", "mode", "height", "width", "n_query", "n_key", *statistic_columns(NL),
         "query_independent", "convention"),
    VIT: ("image", "layer", "block", "use", "family", "head", "num_heads", "grid_h", "grid_w", "n_prefix", "n_query", "n_key",
          "keys", "input_space", *statistic_columns(VIT), "convention"),
}  # fmt: skip
#: the query-dependence suite (``query_dependence="cheap"`` / ``"all"``), in a row after the site's columns
QUERY_COLUMNS = tuple(query_columns(NL))
#: columns in a row only when measured: the control (``controls=True``) and the query-dependence suite;
#: ``use`` only when a block ran twice in a forward (:attr:`~nlanalysis.capture.records.SiteRecord.use`)
_OPTIONAL = frozenset((*names(None, ("control",)), *QUERY_COLUMNS, "use"))


def records_to_frame(records: Iterable[SiteRecord], image_ids: Sequence[Any] | None = None,
                     cross: CrossSite | None = None) -> pd.DataFrame:  # fmt: skip
    """One row per (image, site, map) with the columns of :data:`FRAME_COLUMNS` of the record's site:
    an NL block's one map, or a ViT layer's heads then its head mean (``head == HEAD_MEAN``);
    ``cross``: the capture's cross-site similarity (``cross_site_cos``), where measured; ``use`` (the
    block's run in its forward) in every row when some block ran twice in one forward."""
    rows, records = [], list(records)
    twice = any(rec.use for rec in records)
    for rec in records:
        if rec.stats is None:
            continue
        facts, columns = rec.facts() | ({"use": rec.use} if twice else {}), (*FRAME_COLUMNS[rec.site], *QUERY_COLUMNS)
        between = cross.column(rec) if cross is not None else None
        for b, maps in enumerate(rec.stats.per_image_map()):
            for m, values in enumerate(maps):
                values = {"image": image_ids[b] if image_ids is not None else b, **facts, **values}
                if between is not None:
                    values[CROSS_SITE] = between[b, m].item()
                rows.append({c: values[c] for c in columns if c in values or c not in _OPTIONAL})
    return pd.DataFrame(rows)


def capture_type(model: nn.Module, blocks: str | Iterable[str] | None = None, exclude: str | Iterable[str] | None = None,
                 site: str | None = None) -> type[Capture]:  # fmt: skip
    """The capture for ``model``'s selected sites: ``ViTCapture`` for ViT attention layers,
    ``Capture`` for NL/GC blocks; ``site`` (:data:`~nlanalysis.schema.NL` / :data:`~nlanalysis.schema.VIT`)
    chooses instead of looking. ValueError when the selection holds both kinds."""
    site = select_sites(model, blocks, exclude, site, "analyze")[0]
    if site == VIT:
        from .capture.heads import ViTCapture  # ViT-only: not loaded by a plain ``import nlanalysis``

        return ViTCapture
    return BlockCapture


def analyze(
    model: nn.Module,
    images: Tensor,
    *,
    valid: Tensor | None = None,
    objects: Tensor | None = None,
    blocks: str | Iterable[str] | None = None,
    image_ids: Sequence[Any] | None = None,
    batch_size: int | None = None,
    site: str | None = None,
    **capture_kwargs: Any,
) -> pd.DataFrame:
    """Statistics of every selected attention site of ``model`` (NL/GC blocks or ViT layers) on a batch.

    Args:
        model: a model containing supported NL/GC blocks, or a timm / torchvision / Hugging Face ViT.
        images: ``[B, 3, H, W]`` model input.
        valid: optional ``[B, H, W]`` bool, True on image pixels (False on padding); ``H x W`` the images'.
        objects: optional ``[B, H, W]`` int instance labels of the pixels (0 = no object); float labels
            only where every value is a whole number.
        blocks: glob(s) selecting blocks / attention modules by dotted name.
        image_ids: labels for the ``image`` column (default ``0..B-1``).
        batch_size: run the model on this many images at a time, an int >= 1 (default: all at once). The
            sampled columns (``att_jsd``'s query pairs, the random controls ``ctrl_*``) draw from one generator
            per call, so they depend on the batches and the images' order; every other column does not
            (``nlanalysis extract`` seeds each batch by its images' keys instead).
        site: ``"nl-blocks"`` or ``"vit-heads"``; default: what the selected modules are
            (ValueError if both kinds are selected: their rows have different columns).
        capture_kwargs: passed to the capture (:class:`~nlanalysis.capture.Capture`, or
            :class:`~nlanalysis.capture.heads.ViTCapture`: e.g. ``keys="all"``). Not ``stats=False``:
            the rows are the statistics (for query maps alone use :func:`nlanalysis.capture`).

    The model runs in eval mode (BatchNorm's running statistics, no dropout: the trained model's maps,
    the same whatever the batch), and every module's ``training`` flag is restored afterwards; nothing
    of the model is changed. (:func:`nlanalysis.capture` measures the forwards you run, in their mode.)

    Returns:
        A DataFrame, one row per (image, block), or per (image, layer, head) plus ``head == HEAD_MEAN`` rows.
    """
    check_batch_args(images, valid, image_ids, "analyze", objects)
    if batch_size is not None and (not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"analyze(batch_size=...) must be an int >= 1 (or None: all at once), got {batch_size!r}")
    if capture_kwargs.get("stats", True) is not True:
        raise ValueError("analyze(stats=False): analyze's rows are the statistics, so it would return an empty table; "
                         "for query maps alone use nlanalysis.capture(model, queries=..., stats=False)")  # fmt: skip
    kind = capture_type(model, blocks, capture_kwargs.get("exclude"), site)
    n = images.shape[0]
    ids = list(image_ids) if image_ids is not None else list(range(n))
    step = batch_size or n
    frames = []
    keep = keep_options(kind.default_site, capture_kwargs)
    # torch's threads capped at the free cores: beside a busy neighbour no barrier waits for its core
    with torch.no_grad(), free_core_threads(), eval_mode(model), kind(model, blocks, **capture_kwargs, **keep) as cap:
        cross = CrossSite(cap, drop=bool(keep)) if capture_kwargs.get("query_dependence", DEFAULT_LEVEL) != "off" else None
        for start in range(0, n, step):
            part = slice(start, start + step)
            cap.clear()
            cap.set_valid(valid[part] if valid is not None else None)
            cap.set_objects(objects[part] if objects is not None else None)
            model(images[part])
            frames.append(records_to_frame(cap.records, ids[part], cross))
    return pd.concat(frames, ignore_index=True)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block, then every module's own ``training`` flag back (a mix of modes included)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        try:  # through the modules' own train(): what an override does with the mode is undone too, parents first
            model.train(modes[0][1])
            for module, training in modes[1:]:
                if module.training != training:
                    module.train(training)
        finally:  # and every flag as it was, whatever an override did or raised
            for module, training in modes:
                module.training = training
