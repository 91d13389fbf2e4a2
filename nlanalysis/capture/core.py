"""Forward hooks that capture what every NL/GC block of a model does, without editing it.

In the style of pytorch-grad-cam's ``ActivationsAndGradients``: a context manager owns its hook
handles and always removes them, so hooks never outlive a ``with`` block. For each forward and
each selected block it records a :class:`BlockRecord`: the block's statistics
(:func:`nlanalysis.measure.measure_block`, all queries streamed through the metrics in chunks,
never all kept), the attention maps of chosen query points (kept, with their coordinates in
feature-map cells and input-image pixels), and optionally the tensors ``x``, ``z`` and ``z - x``.

Everything recorded is detached and moved to the CPU; recomputation runs under ``no_grad``.

Coordinates: a query grid of ``H_f x W_f`` cells over a model input of ``H x W`` pixels has
stride ``s = (H / H_f, W / W_f)``; pixel ``(y, x)`` (continuous, pixel ``i`` spans ``[i, i+1)``)
falls in cell ``(floor(y / s_y), floor(x / s_x))``, and a cell's image coordinate is its centre
``((r + 0.5) s_y, (c + 0.5) s_x)``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..adapters import BlockInfo, check_features, list_blocks
from ..measure.blocks import measure_block
from .records import QueryMaps, SiteRecord

__all__ = ["BlockRecord", "Capture", "QueryMaps", "capture", "cell_centres", "check_batch_args", "check_mask", "query_points", "valid_cells"]


#: an NL/GC block's record: a :class:`~nlanalysis.capture.records.SiteRecord` (the ViT-only fields ``None``)
BlockRecord = SiteRecord


def cell_centres(pixels: Tensor, grid: tuple[int, int]) -> Tensor:
    """Sample a ``[B, H, W]`` per-pixel map at the centres of a ``grid`` of cells -> ``[B, *grid]``."""
    if pixels.dim() != 3:
        raise ValueError(f"per-pixel mask/labels must be [B, H, W], got shape {tuple(pixels.shape)}")
    _, h, w = pixels.shape
    gh, gw = grid
    rows = ((torch.arange(gh, dtype=torch.float64) + 0.5) * h / gh).long().clamp(max=h - 1)
    cols = ((torch.arange(gw, dtype=torch.float64) + 0.5) * w / gw).long().clamp(max=w - 1)
    return pixels[:, rows.to(pixels.device)][:, :, cols.to(pixels.device)]


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


def check_batch_args(images: Tensor, valid: Any, image_ids: Sequence[Any] | None, what: str) -> None:
    """The checks at the entry of ``analyze``/``analyze_vit`` (``what``): a bool ``valid`` mask of the
    batch's size, and one image id per image."""
    n = images.shape[0]
    check_mask(valid, f"{what}(valid=...)")
    if valid is not None and valid.shape[0] != n:
        raise ValueError(f"{what}(valid=...): the mask has batch {valid.shape[0]}, the images {n}")
    if image_ids is not None and len(image_ids) != n:
        raise ValueError(f"{what}(image_ids=...): {len(image_ids)} ids for {n} images")


class Capture:
    """Context manager recording :class:`BlockRecord` s for the NL/GC blocks of a model.

    Example::

        with Capture(model, blocks="backbone.layer3.*", queries=[(120, 200)]) as cap:
            model(images)
        for rec in cap.records:
            print(rec.name, rec.stats.att)

    Args:
        model: any ``nn.Module`` containing supported blocks.
        blocks: glob(s) on dotted module names selecting blocks (default: all found).
        exclude: glob(s) of blocks to skip.
        queries: ``(y, x)`` query points whose maps are kept, in ``query_space`` coordinates.
        query_space: ``"image"`` (model-input pixels) or ``"feature"`` (cells of each block's grid).
        stats: compute :class:`BlockStats` (all queries, streamed in chunks).
        keep_tensors: keep ``x``, ``z`` and ``z - x`` on the CPU in every record.
        keep_records: append records to :attr:`records`; switch off and use ``on_record`` to
            stream them (memory then stays flat however many forwards run).
        on_record: callback receiving each record as it is made.
        chunk_size, jsd_pairs, convention, zero, controls: passed to :func:`measure_block`.
        seed: seeds the JSD pair sampling (one generator for the capture's lifetime).
    """

    #: token-sequence blocks (ViT self-attention, adapters with ``token_input``) are measured by
    #: :class:`nlanalysis.vit.ViTCapture`, which sets this; a plain Capture skips them.
    token_blocks = False
    #: how the no-blocks error names this capture's blocks, and what it says is supported
    block_kind = "NL/GC block"
    supported = "nlanalysis.adapters.list_adapters() lists supported families."

    def __init__(
        self,
        model: nn.Module,
        blocks: str | Iterable[str] | None = None,
        *,
        exclude: str | Iterable[str] | None = None,
        queries: Sequence[Sequence[float]] | Tensor | None = None,
        query_space: Literal["image", "feature"] = "image",
        stats: bool = True,
        keep_tensors: bool = False,
        keep_records: bool = True,
        on_record: Callable[[BlockRecord], None] | None = None,
        chunk_size: int = 256,
        jsd_pairs: int = 512,
        convention: str = "1-cos",
        zero: str = "exclude",
        controls: bool = False,
        seed: int = 0,
    ) -> None:
        if query_space not in ("image", "feature"):
            raise ValueError(f"query_space must be 'image' or 'feature', got {query_space!r}")
        self.model = model
        self.blocks: list[BlockInfo] = [
            b for b in list_blocks(model, include=blocks, exclude=exclude)
            if getattr(b.adapter, "token_input", False) == self.token_blocks
        ]  # fmt: skip
        if not self.blocks:
            raise self._nothing_found(model, blocks)
        self.queries = None if queries is None else query_points(queries)
        self.query_space = query_space
        self.stats = stats
        self.keep_tensors = keep_tensors
        self.keep_records = keep_records
        self.on_record = on_record
        self.measure_kwargs = dict(
            chunk_size=chunk_size, jsd_pairs=jsd_pairs, convention=convention, zero=zero, controls=controls
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.records: list[BlockRecord] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._calls = 0
        self._input_size: tuple[int, int] | None = None
        self._valid: Tensor | None = None
        self._objects: Tensor | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Capture:
        if self._handles:
            raise RuntimeError("this Capture is already active")
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._on_model_input, with_kwargs=True))
            self._handles.append(self.model.register_forward_hook(self._on_model_output))
            for block in self.blocks:
                hook = self._make_hook(block)
                self._handles.append(block.module.register_forward_hook(hook, with_kwargs=True))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _nothing_found(self, model: nn.Module, blocks: str | Iterable[str] | None) -> Exception:
        """The error when no block of this capture's kind matches ``blocks``."""
        which = f" matching {blocks!r}" if blocks else ""
        return ValueError(
            f"no supported {self.block_kind}{which} found in {type(model).__name__}. "
            f"Hint: nlanalysis.adapters.list_blocks(model) lists what is found; {self.supported}"
        )

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def clear(self) -> None:
        """Forget the records kept so far."""
        self.records.clear()

    def set_valid(self, valid: Tensor | None) -> None:
        """Mark the valid (non-padding) pixels ``[B, H, W]`` (bool) of the next forward's input."""
        check_mask(valid, "Capture.set_valid(valid)")
        self._valid = valid

    def set_objects(self, labels: Tensor | None) -> None:
        """Instance labels ``[B, H, W]`` (int, 0 = no object) of the next forward's input pixels.

        Enables ``att_own_object`` / ``own_object_share``; each cell takes the label at its centre.
        """
        self._objects = None if labels is None else labels.long()

    def set_input_size(self, size: tuple[int, int]) -> None:
        """Tell the capture the input image size when the model input is not a 4-D tensor."""
        self._input_size = (int(size[0]), int(size[1]))

    # -- hooks -------------------------------------------------------------------------------
    def _on_model_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        first = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(first, Tensor) and first.dim() == 4:
            self._input_size = (first.shape[-2], first.shape[-1])

    def _on_model_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._calls += 1

    def _make_hook(self, block: BlockInfo) -> Callable[..., None]:
        info = block.adapter.describe(block.module)

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            with torch.no_grad():
                record = self._record(block, info, args, kwargs, output)
            if self.keep_records:
                self.records.append(record)
            if self.on_record is not None:
                self.on_record(record)

        return hook

    def _record(self, block: BlockInfo, info: dict[str, Any], args: tuple, kwargs: dict, output: Any) -> BlockRecord:
        adapter = block.adapter
        x = adapter.block_input(args, kwargs).detach()
        check_features(x)
        z = (output[0] if isinstance(output, (tuple, list)) else output).detach()
        context = adapter.context_term(block.module, x, z)
        att = adapter.attention(block.module, x)
        record = BlockRecord(
            name=block.name,
            family=adapter.family,
            info=info,
            call=self._calls,
            input_size=self._input_size,
            query_shape=att.query_shape,
            key_shape=att.key_shape,
        )
        if self.stats:
            valid = objects = None
            for given in (self._valid, self._objects):
                if given is not None and given.shape[0] != x.shape[0]:
                    raise ValueError(f"a per-pixel mask has batch {given.shape[0]}, the block input {x.shape[0]}")
            if self._valid is not None:
                valid = valid_cells(self._valid, att.query_shape)
            if self._objects is not None:
                objects = cell_centres(self._objects, att.query_shape)
            record.stats = measure_block(
                att, x, context, valid=valid, objects=objects, generator=self.generator, **self.measure_kwargs
            )
        if self.queries is not None:
            record.queries = self._query_maps(block.name, att)
        if self.keep_tensors:
            # copies: a model may modify the block output in place after the hook (timm's BasicBlock)
            record.x, record.z, record.context = (t.to("cpu", copy=True) for t in (x, z, context))
        return record

    def _query_maps(self, name: str, att: Any) -> QueryMaps:
        gh, gw = att.query_shape
        q = self.queries
        if self.query_space == "feature":
            cells = q.round()  # checked as floats: a huge one would wrap when made an integer
            bad = (cells[:, 0] < 0) | (cells[:, 0] >= gh) | (cells[:, 1] < 0) | (cells[:, 1] >= gw)
            if bad.any():
                y, x = q[bad.nonzero()[0, 0]].tolist()
                raise ValueError(f"query (row={y:g}, col={x:g}) is outside the {gh}x{gw} query grid of block {name}")
            cells = cells.long()
            image_yx = None
            if self._input_size is not None:
                sy, sx = self._input_size[0] / gh, self._input_size[1] / gw
                image_yx = (cells.double() + 0.5) * torch.tensor([sy, sx], dtype=torch.float64)
        else:
            if self._input_size is None:
                raise ValueError(
                    "query points are in image pixels but the model input size is unknown: "
                    "call Capture.set_input_size((H, W)) or use query_space='feature'"
                )
            h, w = self._input_size
            bad = (q[:, 0] < 0) | (q[:, 0] >= h) | (q[:, 1] < 0) | (q[:, 1] >= w)
            if bad.any():
                y, x = q[bad.nonzero()[0, 0]].tolist()
                raise ValueError(f"query (y={y:g}, x={x:g}) is outside the {h}x{w} input image")
            cells = torch.stack(
                [(q[:, 0] * gh / h).floor().long().clamp(max=gh - 1), (q[:, 1] * gw / w).floor().long().clamp(max=gw - 1)], 1
            )
            image_yx = q.clone()
        index = (cells[:, 0] * gw + cells[:, 1]).to(att.device)
        maps = att.take(index).detach().float().cpu()
        maps = maps.reshape(maps.shape[0], maps.shape[1], *att.key_shape)
        return QueryMaps(cells, image_yx, maps)


def capture(model: nn.Module, blocks: str | Iterable[str] | None = None, **kwargs: Any) -> Capture:
    """Shorthand for :class:`Capture` (``with nlanalysis.capture(model) as cap: ...``)."""
    return Capture(model, blocks, **kwargs)


