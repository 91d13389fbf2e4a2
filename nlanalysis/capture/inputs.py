"""What a capture is given, checked and put on a site's grid: valid-pixel masks, instance labels and query points
(see :mod:`~nlanalysis.capture.core` for the coordinates), and the batch and site options of the callers."""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["cell_centres", "check_batch_args", "check_mask", "check_objects", "check_pixels", "check_site_options",
           "query_points", "valid_cells"]  # fmt: skip


def cell_centres(pixels: Tensor, grid: tuple[int, int]) -> Tensor:
    """Sample a ``[B, H, W]`` per-pixel map at the centres of a ``grid`` of cells -> ``[B, *grid]``."""
    if pixels.dim() != 3:
        raise ValueError(f"per-pixel mask/labels must be [B, H, W], got shape {tuple(pixels.shape)}")
    _, h, w = pixels.shape
    gh, gw = grid
    # the centre pixels, as float64 arithmetic truncated (what torch's (arange + 0.5) * h / gh .long() gives)
    rows = [min(int((i + 0.5) * h / gh), h - 1) for i in range(gh)]
    cols = [min(int((j + 0.5) * w / gw), w - 1) for j in range(gw)]
    row_step, col_step = _step(rows), _step(cols)
    if row_step and col_step:  # evenly spaced (the usual grid): a strided view's copy, not two gathers (~12 ops -> 3)
        view = pixels[:, rows[0] : rows[-1] + 1 : row_step, cols[0] : cols[-1] + 1 : col_step]
        return view.clone(memory_format=torch.contiguous_format)
    index = torch.tensor(rows, device=pixels.device), torch.tensor(cols, device=pixels.device)
    return pixels[:, index[0]][:, :, index[1]]


def _step(index: list[int]) -> int | None:
    """The common difference (>= 1) of an increasing arithmetic progression ``index``, else ``None``."""
    step = index[1] - index[0] if len(index) > 1 else 1
    if step < 1 or any(b - a != step for a, b in zip(index, index[1:])):
        return None
    return step


def valid_cells(valid: Tensor, grid: tuple[int, int]) -> Tensor:
    """Downsample a ``[B, H, W]`` bool mask of valid input pixels to a ``grid`` of cells.

    A cell is valid when the pixel at its centre is valid (padding sits at the bottom/right,
    so this keeps every cell whose centre lies on the image).
    """
    return cell_centres(valid, grid).bool()


def query_points(queries: Sequence[Sequence[float]] | Tensor) -> Tensor:
    """Query points as ``float64 [K, 2]``: ``K`` pairs ``(y, x)``, or one pair ``(y, x)``.

    Raises:
        ValueError: not numbers, not pairs (e.g. three coordinates), or not finite; says which.
    """
    try:
        q = torch.as_tensor(queries, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"queries must be (y, x) pairs of numbers, [K, 2]: {err}") from err
    if q.numel() == 0:
        return q.reshape(0, 2)
    if q.dim() == 1 and q.shape[0] == 2:
        q = q[None]
    if q.dim() != 2 or q.shape[1] != 2:
        raise ValueError(f"queries must be (y, x) pairs, [K, 2]; got shape {list(q.shape)}")
    bad = ~torch.isfinite(q).all(1)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"query {i} ({', '.join(f'{v:g}' for v in q[i].tolist())}) is not finite ({int(bad.sum())} such of {len(q)})")
    return q


def check_mask(valid: Any, what: str) -> None:
    """Raise unless ``valid`` is ``None`` or a bool tensor ``[B, H, W]``; ``what`` names the argument.

    A float mask is refused rather than cast: ``0.3`` would silently count as valid.
    """
    if valid is None:
        return
    if not isinstance(valid, Tensor) or valid.dtype != torch.bool:
        kind = f"a {valid.dtype} tensor" if isinstance(valid, Tensor) else f"a {type(valid).__name__}"
        raise TypeError(f"{what}: the valid-pixel mask must be a bool tensor [B, H, W] (True on image pixels), "
                        f"got {kind}; e.g. pass mask > 0.5")  # fmt: skip
    if valid.dim() != 3:
        raise ValueError(f"{what}: the valid-pixel mask must be [B, H, W], got shape {list(valid.shape)}")


def check_objects(labels: Any, what: str) -> Tensor | None:
    """``labels`` as a long tensor ``[B, H, W]`` (``None`` stays ``None``); ``what`` names the argument.

    Integer or bool labels are taken as they are; float labels only where every value is a whole
    number (``1.5`` would silently merge with ``1``). TypeError otherwise, and for a non-tensor."""
    if labels is None:
        return None
    if not isinstance(labels, Tensor):
        hint = "; pass torch.from_numpy(labels)" if type(labels).__module__ == "numpy" else ""
        raise TypeError(f"{what}: the object labels must be an integer tensor [B, H, W] (0 = no object), "
                        f"got a {type(labels).__name__}{hint}")  # fmt: skip
    if labels.is_complex() or (labels.is_floating_point() and not bool((labels.isfinite() & (labels == labels.round())).all())):
        raise TypeError(f"{what}: the object labels must be integers [B, H, W] (0 = no object), got a {labels.dtype} tensor "
                        "with values that are not whole numbers (they would be truncated, merging objects); "
                        "pass integer labels")  # fmt: skip
    if labels.dim() != 3:
        raise ValueError(f"{what}: the object labels must be [B, H, W], got shape {list(labels.shape)}")
    return labels.long()


def check_pixels(given: Tensor | None, size: tuple[int, int], what: str, of: str) -> None:
    """Raise unless a per-pixel ``[B, H, W]`` map (``what``) has the ``(H, W)`` of the model input (``of``):
    a transposed or grid-sized map would otherwise be silently stretched onto each site's grid."""
    if given is not None and tuple(given.shape[-2:]) != tuple(size):
        h, w = size
        raise ValueError(f"{what} is {given.shape[-2]}x{given.shape[-1]} (H x W) but {of} is {h}x{w}: a per-pixel "
                         f"map must be [B, {h}, {w}], one value per input pixel (not per cell of a site's grid, "
                         "not transposed)")  # fmt: skip


def check_batch_args(images: Any, valid: Any, image_ids: Sequence[Any] | None, what: str, objects: Any = None) -> None:
    """The checks at the entry of ``analyze``/``analyze_vit`` (``what``): ``images`` a ``[B, C, H, W]``
    tensor, a bool ``valid`` mask and ``objects`` labels of the batch's size and the images' ``H x W``,
    and one image id per image."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{what}: expected a [B, C, H, W] tensor of images, got a {type(images).__name__} "
                        "(stack a list of [C, H, W] tensors with torch.stack; convert a PIL image or array with "
                        "torchvision.transforms.functional.to_tensor or torch.from_numpy)")  # fmt: skip
    if images.dim() != 4:
        hint = " (one image: add the batch dimension, images[None])" if images.dim() == 3 else ""
        raise ValueError(f"{what}: expected a [B, C, H, W] tensor of images, got shape {list(images.shape)}{hint}")
    n, size = images.shape[0], tuple(images.shape[-2:])
    if n == 0:
        raise ValueError(f"{what}: empty batch (0 images): nothing to measure")
    check_mask(valid, f"{what}(valid=...)")
    labels = check_objects(objects, f"{what}(objects=...)")
    for name, given in (("valid", valid), ("objects", labels)):
        if given is not None and given.shape[0] != n:
            raise ValueError(f"{what}({name}=...): the {'mask' if name == 'valid' else 'label map'} has batch {given.shape[0]}, the images {n}")
        check_pixels(given, size, f"{what}({name}=...)", "the images' H x W")
    if image_ids is not None and len(image_ids) != n:
        raise ValueError(f"{what}(image_ids=...): {len(image_ids)} ids for {n} images")


def check_site_options(chunk_size: Any, jsd_pairs: Any, share_softmax: Any, site: str) -> None:
    """Refuse, before any forward, the options of a site kind (``site``) that would otherwise fail deep in a
    kernel or silently mean something else: ``chunk_size`` an int >= 1 (``None`` where the kind sizes its own),
    ``jsd_pairs`` an int >= 0 (0: no JSD), ``share_softmax`` a bool."""
    def whole(v: Any) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    if chunk_size is not None and not (whole(chunk_size) and chunk_size >= 1):
        raise ValueError(f"{site}: chunk_size must be an int >= 1, got {chunk_size!r}")
    if not (whole(jsd_pairs) and jsd_pairs >= 0):
        raise ValueError(f"{site}: jsd_pairs must be an int >= 0 (0: no JSD), got {jsd_pairs!r}")
    if not isinstance(share_softmax, bool):
        raise TypeError(f"{site}: share_softmax must be True or False, got {share_softmax!r}")
