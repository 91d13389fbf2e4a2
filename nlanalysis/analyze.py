"""One call from images to a table: run a model under :class:`~nlanalysis.capture.Capture`.

This is the Python API the CLI's ``analyze`` command and the notebooks use for in-memory
batches. For data sets use ``nlanalysis extract``, which streams results to disk.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from .capture.blocks import BlockRecord, Capture, check_batch_args
from .schema import NL, statistic_columns

__all__ = ["STAT_COLUMNS", "analyze", "records_to_frame"]

#: statistic columns of an NL/GC block's rows, in order (:func:`nlanalysis.schema.statistic_columns`).
STAT_COLUMNS = statistic_columns(NL)


def records_to_frame(records: Iterable[BlockRecord], image_ids: Sequence[Any] | None = None) -> pd.DataFrame:
    """One row per (image, block) with the block's facts and :data:`STAT_COLUMNS`."""
    rows = []
    for rec in records:
        if rec.stats is None:
            continue
        for b, stats in enumerate(rec.stats.per_image()):
            row = {
                "image": image_ids[b] if image_ids is not None else b,
                "block": rec.name,
                "family": rec.family,
                "mode": rec.info.get("mode", ""),
                "height": rec.query_shape[0],
                "width": rec.query_shape[1],
                "n_query": stats["n_query"],
                "n_key": stats["n_key"],
            }
            row.update({k: stats[k] for k in STAT_COLUMNS})
            row.update(query_independent=stats["query_independent"], convention=stats["convention"])
            rows.append(row)
    return pd.DataFrame(rows)


def analyze(
    model: nn.Module,
    images: Tensor,
    *,
    valid: Tensor | None = None,
    objects: Tensor | None = None,
    blocks: str | Iterable[str] | None = None,
    image_ids: Sequence[Any] | None = None,
    **capture_kwargs: Any,
) -> pd.DataFrame:
    """Statistics of every selected NL/GC block of ``model`` on a batch.

    Args:
        model: a model containing supported blocks; it is run once on ``images``.
        images: ``[B, 3, H, W]`` model input.
        valid: optional ``[B, H, W]`` bool, True on image pixels (False on padding).
        objects: optional ``[B, H, W]`` int instance labels of the pixels (0 = no object).
        blocks: glob(s) selecting blocks by dotted name.
        image_ids: labels for the ``image`` column (default ``0..B-1``).
        capture_kwargs: passed to :class:`~nlanalysis.capture.Capture`.

    Returns:
        A DataFrame, one row per (image, block).
    """
    check_batch_args(images, valid, image_ids, "analyze")
    with torch.no_grad(), Capture(model, blocks, **capture_kwargs) as cap:
        cap.set_valid(valid)
        cap.set_objects(objects)
        model(images)
    return records_to_frame(cap.records, image_ids)
