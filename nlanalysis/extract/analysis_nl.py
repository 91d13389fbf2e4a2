"""The ``nl-blocks`` analysis: the NL/GC blocks of a ResNet checkpoint (see :mod:`.analyses`).

The checkpoint is rebuilt by :func:`nlanalysis.checkpoints.load_checkpoint` and measured by
:class:`nlanalysis.capture.Capture` with its own preprocessing; one row per image and block
(:data:`~nlanalysis.extract.analyses.COLUMNS`).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..adapters import list_blocks
from ..analyze import records_to_frame
from ..capture.blocks import Capture
from ..checkpoints import LoadedCheckpoint, Preprocess, check_checkpoint_file, load_checkpoint
from ..checkpoints.facts import run_facts
from ..data import prepare_image
from ..data.transforms import padded_size
from ..measure.cross_site import CrossSite, keep_options
from ..schema import NL, names
from .analyses import COLUMNS, OBJECT_COLUMNS, Analysis, LayerMaps, pick_blocks, records_layer_maps, register_analysis, with_nan_columns
from .object_sites import ObjectContext, with_object_context
from .store import sha256_file

__all__ = ["CHECKPOINT_OVERRIDES", "BlockAnalysis"]

CONTROL_COLUMNS = tuple(names(NL, ("control",)))

#: the architecture overrides of :func:`~nlanalysis.checkpoints.load_checkpoint` (flags ``--style``, ...).
CHECKPOINT_OVERRIDES = ("style", "nl_mode", "use_scale", "position")


@register_analysis
class BlockAnalysis(Analysis):
    """The NL/GC blocks of a checkpoint (:func:`nlanalysis.checkpoints.load_checkpoint`).

    Args:
        loaded: the rebuilt checkpoint.
        blocks: glob(s) on block names (default: every NL/GC block).
    """

    kind = "nl-blocks"
    title = "NL/GC checkpoints"
    options = ("config", "trust_checkpoint", *CHECKPOINT_OVERRIDES)
    fallback = True  # any checkpoint no other kind claims: load_checkpoint says what is wrong with it
    columns = COLUMNS
    object_statistics = True
    controls = True
    chunk_size = 256

    def __init__(self, loaded: LoadedCheckpoint, blocks: str | Sequence[str] | None = None) -> None:
        self.loaded = loaded
        self.model = loaded.model.eval()
        self.blocks = pick_blocks(self.model, blocks, lambda a: not getattr(a, "token_input", False), "NL/GC blocks", loaded.path)
        self.prepare = partial(prepare_image, pre=loaded.preprocess)
        self._sha256 = sha256_file(loaded.path)
        self._grids: dict[tuple[int, int], list[tuple[int, int]] | str] = {}  # str: why the probe failed
        self._cross: CrossSite | None = None

    @classmethod
    def claims(cls, source: Any) -> bool:
        return isinstance(source, (str, os.PathLike, LoadedCheckpoint))

    @classmethod
    def check_source(cls, source: Any) -> None:
        """A path: missing, not a regular file, empty, truncated or corrupt raises its :class:`CheckpointError`."""
        if isinstance(source, (str, os.PathLike)):
            check_checkpoint_file(source)

    @classmethod
    def from_source(cls, source: Any, *, blocks: str | Sequence[str] | None, options: Mapping[str, Any]) -> BlockAnalysis:
        """``options``: ``config`` (an mmdetection config file), ``trust_checkpoint`` and the overrides
        :data:`CHECKPOINT_OVERRIDES` of :func:`~nlanalysis.checkpoints.load_checkpoint`."""
        if isinstance(source, LoadedCheckpoint):
            if options:
                raise ValueError(f"{', '.join(options)}: options of loading {source.path}, which is loaded already")
            return cls(source, blocks)
        overrides = {k: options.get(k) for k in CHECKPOINT_OVERRIDES}
        loaded = load_checkpoint(source, config=options.get("config"), trust=bool(options.get("trust_checkpoint")), overrides=overrides)
        return cls(loaded, blocks)

    @property
    def preprocess(self) -> Preprocess:
        return self.loaded.preprocess

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        return padded_size(height, width, self.preprocess)

    def query_grids(self, input_shape: tuple[int, int]) -> list[tuple[int, int]]:
        shape = (int(input_shape[0]), int(input_shape[1]))
        if shape not in self._grids:
            try:
                self._grids[shape] = _probe_grids(self.model, self.blocks, shape)
            except Exception as err:  # remembered: every image of this shape fails alone, without probing again
                self._grids[shape] = f"finding the blocks' query grids on a {shape[0]}x{shape[1]} input: {type(err).__name__}: {err}"
        grids = self._grids[shape]
        if isinstance(grids, str):
            raise ValueError(grids)
        return grids

    def capture(self, *, queries: np.ndarray | None, seed: int, jsd_pairs: int, chunk_size: int | None, controls: bool) -> Capture:
        options = dict(query_dependence=self.query_dependence)
        chunk_size = self.chunk_size if chunk_size is None else chunk_size
        cap = Capture(self.model, self.blocks, queries=queries, keep_records=True, seed=seed, jsd_pairs=jsd_pairs,
                      chunk_size=chunk_size, controls=controls,
                      **options, **keep_options(NL, options))  # fmt: skip
        suite = self.query_dependence != "off"  # with it the object context (its label mass from the suite's row pass)
        self._context = ObjectContext(self.model, chunk_size, drop=False, locality=self.locality_control) if suite else None
        if self._context is not None:
            self._context.attach(cap)
        # each block against the previous; called after the object context, it lets go of the kept input
        self._cross = CrossSite(cap, drop=True) if suite else None
        return cap

    def frame(self, records: Sequence[Any], n_images: int, valid: Any = None) -> pd.DataFrame:
        # the control in the maps' own form (ctrl_form*) is measured only with --controls, for per-query maps
        frame = records_to_frame(records, image_ids=list(range(n_images)), cross=self._cross)
        frame = with_nan_columns(frame, (*OBJECT_COLUMNS, *CONTROL_COLUMNS))
        return with_object_context(frame, self._context) if getattr(self, "_context", None) else frame

    def layer_maps(self, records: Sequence[Any], image: int, queries: slice) -> list[LayerMaps]:
        return records_layer_maps(records, image, queries, lambda r: (r.query_shape, r.key_shape))

    def settings(self) -> dict[str, Any]:
        return {
            "checkpoint_sha256": self._sha256,
            "arch": self.loaded.arch.to_dict(),  # with the hash: the model, whatever options rebuilt it
            "blocks": self.blocks,
            "preprocess": self.preprocess.to_dict(),
        }

    def describe(self) -> dict[str, Any]:
        loaded = self.loaded
        return {
            "checkpoint": {
                "path": str(Path(loaded.path).resolve()),
                "sha256": self._sha256,
                "format": loaded.format,
                "arch": loaded.arch.to_dict(),
                "blocks": loaded.blocks,
                "notes": loaded.notes,
                **({"meta": facts} if (facts := run_facts(loaded.meta)) else {}),  # what the run is, without the file
            },
            "preprocess": self.preprocess.to_dict(),
            "padding": "positions that are only padding are excluded from every statistic, as queries and as keys",
        }


class _Probed(Exception):
    """Raised by :func:`_probe_grids` once every block's input is seen: the rest need not run."""


def _probe_grids(model: nn.Module, blocks: Sequence[str], input_shape: tuple[int, int]) -> list[tuple[int, int]]:
    """The query grid of each of ``blocks`` for a ``1 x 3 x H x W`` input: the spatial shape of the
    block input (what the NL/GC adapters attend over). The forward runs on the meta device (shapes
    only), or on zeros where the model cannot run there, and stops at the last block's input."""
    modules = dict(model.named_modules())
    adapters = {b.name: b.adapter for b in list_blocks(model) if b.name in blocks}
    grids: dict[str, tuple[int, int]] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
            grids[name] = tuple(int(v) for v in adapters[name].block_input(args, kwargs).shape[-2:])
            if len(grids) == len(blocks):
                raise _Probed

        return record

    def forward(device: str | torch.device, state: dict[str, torch.Tensor] | None) -> None:
        x = torch.zeros(1, 3, *input_shape, device=device)
        try:
            torch.func.functional_call(model, state, (x,)) if state is not None else model(x)
        except _Probed:
            pass

    handles = [modules[name].register_forward_pre_hook(hook(name), with_kwargs=True) for name in blocks]
    try:
        with torch.no_grad():
            try:
                forward("meta", {k: v.to("meta") for k, v in (*model.named_parameters(), *model.named_buffers())})
            except Exception:  # an op without a meta kernel before the last block: a real forward
                grids.clear()
                param = next(model.parameters(), None)
                forward(param.device if param is not None else "cpu", None)
    finally:
        for h in handles:
            h.remove()
    missing = [name for name in blocks if name not in grids]
    if missing:
        raise ValueError(f"blocks {', '.join(missing)} did not run on a {input_shape[0]}x{input_shape[1]} input")
    return [grids[name] for name in blocks]
