"""The NL/GC block site of :class:`~nlanalysis.capture.core.Capture`: what its hooks record and measure.

For each forward and each selected block: the block's statistics
(:func:`nlanalysis.measure.measure_block`, all queries streamed through the metrics in chunks,
never all kept), the attention maps of chosen query points, and optionally the tensors ``x``,
``z`` and ``z - x``. The maps are measured in the block's own attention pass where its adapter knows
the block's forward (:mod:`.inpass_blocks`: this project's and mmcv's ``NonLocal2d``, every mode);
otherwise they are recomputed from the block's input and weights by its adapter
(:meth:`nlanalysis.adapters.BlockAdapter.attention`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ..adapters import BlockInfo, check_features
from ..measure.blocks import measure_block
from ..measure.query_dep import DEFAULT_LEVEL, check_level
from ..schema import NL
from .core import Capture, Site, capture, cell_centres, check_batch_args, check_mask, check_site_options, query_points, valid_cells
from .inpass_blocks import InPassBlock
from .records import QueryMaps, SiteRecord

__all__ = ["BlockCapture", "BlockRecord", "BlockSite", "Capture", "QueryMaps", "capture", "cell_centres", "check_batch_args",
           "check_mask", "query_points", "valid_cells"]  # fmt: skip

#: an NL/GC block's record: a :class:`~nlanalysis.capture.records.SiteRecord` (the ViT-only fields ``None``)
BlockRecord = SiteRecord


class BlockSite(Site):
    """NL/GC blocks: maps from the block's adapter, statistics from :func:`~nlanalysis.measure.blocks.measure_block`.

    Args:
        keep_tensors: keep ``x``, ``z`` and ``z - x`` on the CPU in every record.
        chunk_size, jsd_pairs, convention, zero, controls, kernels, query_dependence: passed to :func:`measure_block`
            (``kernels``: ``"auto"``, ``"native"`` or ``"eager"``, as for ViT heads; ``query_dependence``: ``"off"``,
            ``"cheap"`` (default) or ``"all"``, :mod:`nlanalysis.measure.query_dep`, the stride read from the input size).
        share_softmax: with ``stats``, measure the maps a block forms in its own forward, as it forms them
            (:mod:`nlanalysis.capture.inpass_blocks`: one attention pass, not two; the same name and default
            as the ViT heads' switch, though it covers every NL mode, softmax or not); the block's
            output equals an uncaptured forward's to float32 rounding. ``False``: every op is torch's and
            the maps are recomputed beside the block. Not with ``controls`` or ``query_dependence="all"``; with
            ``"cheap"`` only softmax maps measured by the native kernel without object labels (the suite from the
            same pass), other forwards recompute.
        keep_input: keep a copy of ``x`` on its device in every record (``keep_tensors`` keeps it on the CPU
            instead): what :class:`~nlanalysis.measure.cross_site.CrossSite` and the object context rebuild
            the maps from as each record is made, before they let go of it (no copy to the host).

    Attributes:
        served: forwards whose block maps were measured in the block's own pass (``share_softmax``).
    """

    noun = "NL/GC block"

    def __init__(self, cap: Capture, keep_tensors: bool = False, chunk_size: int = 256, jsd_pairs: int = 512,
                 convention: str = "1-cos", zero: str = "exclude", controls: bool = False,
                 kernels: str = "auto", query_dependence: str = DEFAULT_LEVEL, share_softmax: bool = True,
                 keep_input: bool = False) -> None:  # fmt: skip
        check_site_options(chunk_size, jsd_pairs, share_softmax, "NL/GC blocks")
        super().__init__(cap)
        self.keep_tensors = keep_tensors
        self.keep_input = keep_input and not keep_tensors
        self.measure_kwargs = dict(chunk_size=chunk_size, jsd_pairs=jsd_pairs, convention=convention, zero=zero, controls=controls,
                                   kernels=kernels, query_dependence=check_level(query_dependence))
        self.share_softmax = share_softmax and cap.stats and not controls and query_dependence in ("off", "cheap")
        self.served = 0
        self._in_pass: list[InPassBlock] = []

    def close(self) -> None:
        for in_pass in self._in_pass:
            in_pass.close()
        self._in_pass.clear()

    def attach(self, index: int, block: BlockInfo) -> Callable[[nn.Module, tuple, dict, Any], SiteRecord]:
        info = block.adapter.describe(block.module)
        call = block.adapter.map_call(block.module) if self.share_softmax else None
        in_pass = None
        if call is not None:
            in_pass = InPassBlock(self, block, call)
            in_pass.attach(self.cap._handles)
            self._in_pass.append(in_pass)
        return lambda module, args, kwargs, output: self.record(block, info, args, kwargs, output, in_pass)

    def record(self, block: BlockInfo, info: dict[str, Any], args: tuple, kwargs: dict, output: Any,
               in_pass: InPassBlock | None = None) -> SiteRecord:  # fmt: skip
        """The record of ``block`` in this forward: its maps as measured in its pass (``in_pass``), or recomputed."""
        cap, adapter = self.cap, block.adapter
        x = adapter.block_input(args, kwargs).detach()
        check_features(x)
        z = (output[0] if isinstance(output, (tuple, list)) else output).detach()
        # z - x is formed only where it is kept or the adapter defines it otherwise: the statistics read x and z
        residual = not self.keep_tensors and adapter.residual() and isinstance(z, Tensor)
        context = None if residual else adapter.context_term(block.module, x, z)
        found = in_pass.take() if in_pass is not None else None
        att = found[0] if found is not None else adapter.attention(block.module, x)
        record = cap.site_record(block, info, (att.query_shape, att.key_shape))
        if cap.stats:
            valid, objects = cap.cell_masks(att.query_shape, x.shape[0], "block input")
            record.stats = measure_block(att, x, context, output=z if residual else None, valid=valid, objects=objects,
                                         generator=cap.generator, stride=cap.stride(att.query_shape), **self.measure_kwargs)  # fmt: skip
        if cap.queries is not None:
            record.queries = found[1] if found is not None else cap.query_maps(block.name, att)
        if self.keep_tensors:
            # copies: a model may modify the block output in place after the hook (timm's BasicBlock)
            record.x, record.z, record.context = (t.to("cpu", copy=True) for t in (x, z, context))
        elif self.keep_input:
            record.x = x.clone()  # a copy: the model may change its input in place after the hook
        return record


class BlockCapture(Capture):
    """:class:`Capture` of NL/GC blocks only (``site="nl-blocks"``): a hybrid model's ViT attention is skipped."""

    default_site = NL
