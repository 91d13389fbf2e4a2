"""The capture: forward hooks that record what every attention site of a model does, without editing it.

In the style of pytorch-grad-cam's ``ActivationsAndGradients``: a context manager owns its hook
handles and always removes them, so hooks never outlive a ``with`` block. :class:`Capture` finds
the sites through the adapter registry; how a site is hooked, recorded and measured comes from the
kind its adapter names (``BlockAdapter.site``): :class:`~nlanalysis.capture.blocks.BlockSite` (NL/GC
blocks) or :class:`~nlanalysis.capture.heads.HeadSite` (ViT layers, imported only when used). Each
forward and selected site gives a :class:`~nlanalysis.capture.records.SiteRecord`: statistics, the
maps of chosen query points and what the kind keeps besides, detached, on the CPU.

Coordinates: a query grid of ``H_f x W_f`` cells over a model input of ``H x W`` pixels has
stride ``s = (H / H_f, W / W_f)``; pixel ``(y, x)`` (continuous, pixel ``i`` spans ``[i, i+1)``)
falls in cell ``(floor(y / s_y), floor(x / s_x))``, and a cell's image coordinate is its centre
``((r + 0.5) s_y, (c + 0.5) s_x)``.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ..adapters import BlockInfo, list_blocks
from ..nograd import without_grad
from ..schema import NL, VIT
from .inputs import (cell_centres, check_batch_args, check_mask, check_objects, check_pixels, check_site_options, query_points,
                     valid_cells)
from .records import QueryMaps, SiteRecord

__all__ = ["Capture", "Site", "capture", "cell_centres", "check_batch_args", "check_mask", "check_objects", "check_pixels",
           "check_site_options", "query_points", "select_sites", "valid_cells"]  # fmt: skip

#: site kind -> the module and class of its :class:`Site`
_KINDS = {
    NL: ("nlanalysis.capture.blocks", "BlockSite"),
    VIT: ("nlanalysis.capture.heads", "HeadSite"),  # ViT-only: imported when a model has such sites
}


def select_sites(model: nn.Module, blocks: str | Iterable[str] | None, exclude: str | Iterable[str] | None,
                 site: str | None, what: str) -> tuple[str, list[BlockInfo]]:  # fmt: skip
    """The site kind and the sites of ``model`` selected by globs (:func:`~nlanalysis.adapters.list_blocks`).

    ``site`` ``None`` is the selected modules' kind (NL when none is found); a ValueError, which says how
    to choose, when they are of both kinds or ``site`` is unknown. ``what`` names the caller in errors."""
    found = list_blocks(model, include=blocks, exclude=exclude)
    if site is None:
        nl, vit = ([b.name for b in found if b.adapter.site == kind] for kind in (NL, VIT))
        if nl and vit:
            names = [", ".join(n[:3]) + (", ..." if len(n) > 3 else "") for n in (nl, vit)]
            raise ValueError(
                f"{what}: {type(model).__name__} has NL/GC blocks ({names[0]}) and ViT attention modules "
                f"({names[1]}); their rows have different columns (NL: mode, height, width; ViT: layer, "
                f"head, grid_h, grid_w, ...), so one call measures one kind: select it with blocks=... or "
                f"site={NL!r} / site={VIT!r}"
            )
        site = VIT if vit else NL
    if site not in _KINDS:
        raise ValueError(f"{what}(site=...) must be {NL!r}, {VIT!r} or None, got {site!r}")
    return site, [b for b in found if b.adapter.site == site]


@functools.cache
def _site_options(site_class: type) -> list[str]:
    """The options a site kind takes: its ``__init__`` keywords after the capture (read once per class:
    ``inspect.signature`` costs ~0.2 ms, and extract makes a capture per forward)."""
    return list(inspect.signature(site_class).parameters)[1:]


class Site:
    """How one kind of attention site is hooked, recorded and measured; made by :class:`Capture` with
    the kind's options (the subclass's ``__init__`` keywords), it holds what the kind's hooks share.
    ``noun`` and ``supported`` name the kind in the no-site error; ``measure_kwargs`` go to its measure."""

    noun: ClassVar[str]
    supported: ClassVar[str] = "nlanalysis.adapters.list_adapters() lists supported families."

    def __init__(self, cap: Capture) -> None:
        self.cap, self.measure_kwargs = cap, {}

    def attach(self, index: int, block: BlockInfo) -> Callable[[nn.Module, tuple, dict, Any], SiteRecord]:
        """Register the site's own hooks (on ``cap._handles``); return what turns its forward into a record."""
        raise NotImplementedError

    def close(self) -> None:
        """Drop what the hooks hold between calls (the capture's hooks are gone)."""


class Capture:
    """Context manager recording a :class:`~nlanalysis.capture.records.SiteRecord` per attention site and forward.

    Example::

        with Capture(model, blocks="backbone.layer3.*", queries=[(120, 200)]) as cap:  # (y, x): row 120, col 200
            model(images)
        for rec in cap.records:
            print(rec.name, rec.stats.att)

    Args:
        model: any ``nn.Module`` containing supported blocks: NL/GC blocks, or ViT self-attention.
        blocks: glob(s) on dotted module names selecting sites (default: all found).
        site: :data:`~nlanalysis.schema.NL` (``"nl-blocks"``) or :data:`~nlanalysis.schema.VIT`
            (``"vit-heads"``); default: the kind of the selected modules. A model with both kinds
            (a hybrid) needs ``site=`` or ``blocks=``: one capture measures one kind.
        exclude: glob(s) of sites to skip.
        queries: ``(y, x)`` query points whose maps are kept, in ``query_space`` coordinates.
        query_space: ``"image"`` (model-input pixels) or ``"feature"`` (cells of each site's query grid).
        stats: compute the statistics (all queries, streamed in chunks).
        keep_records: append records to :attr:`records`; switch off and use ``on_record`` to
            stream them (memory then stays flat however many forwards run).
        on_record: callback receiving each record as it is made.
        seed: seeds the JSD pair sampling (one generator for the capture's lifetime), and a ViT's controls.
        options: the site kind's own, documented with it: :class:`~nlanalysis.capture.blocks.BlockSite`
            (``keep_tensors``, ``chunk_size``, ``jsd_pairs``, ``controls``, ...) and
            :class:`~nlanalysis.capture.heads.HeadSite` (``keys``, ``kernels``, ``share_softmax``, ...).
            The site's attributes (``measure_kwargs``, a ViT's ``shared_calls``, ...) read as the capture's.

    Attributes: ``kind`` (the site kind), ``site`` (its :class:`Site`), ``blocks`` (the sites found), ``records``.

    A capture measures the forwards you run as they run: it does not switch the model's mode, so a
    model in train mode is measured with batch statistics in its BatchNorm (and updates their running
    means) and with dropout; call ``model.eval()`` first for the trained model's maps
    (:func:`nlanalysis.analyze` does, and restores the mode after). The masks of :meth:`set_valid` and
    :meth:`set_objects` are per input pixel: a forward whose input is not their ``H x W`` is refused, and so is
    one whose input size is unknown (not a 4-D tensor, no :meth:`set_input_size`). The three apply to the next
    forward only: a later one runs without them unless they are given again. A site run outside a forward of
    ``model`` (a block called directly: ``cap.set_valid(mask); model.gc(model.nl(model.stem(x)))``) is measured
    with what they gave since the last forward, without taking it: every such run until the next forward sees
    it, and that forward takes it as usual. With nothing given there is no mask, no labels and no input size (a
    4-D input is read only at the model's input: give :meth:`set_input_size` for pixel strides, image-space
    queries or a per-pixel mask, which is refused where the size is unknown).
    """

    #: the site kind when ``site=None`` (``None``: the selected modules' kind)
    default_site: ClassVar[str | None] = None

    def __init__(
        self,
        model: nn.Module,
        blocks: str | Iterable[str] | None = None,
        *,
        site: str | None = None,
        exclude: str | Iterable[str] | None = None,
        queries: Sequence[Sequence[float]] | Tensor | None = None,
        query_space: Literal["image", "feature"] = "image",
        stats: bool = True,
        keep_records: bool = True,
        on_record: Callable[[SiteRecord], None] | None = None,
        seed: int = 0,
        **options: Any,
    ) -> None:
        if query_space not in ("image", "feature"):
            raise ValueError(f"query_space must be 'image' or 'feature', got {query_space!r}")
        kind, self.blocks = select_sites(model, blocks, exclude, site or self.default_site, "capture")
        for b in self.blocks:
            why = b.adapter.overridden(b.module)
            if why:  # e.g. a sharper softmax in its own forward: the recomputed maps would be its parent's
                warnings.warn(f"{b.name or 'the model'}: {why} of {b.adapter.family}'s block; its maps are computed as that block computes "
                              "them, which is right only if the override does not change them", stacklevel=2)  # fmt: skip
        module, name = _KINDS[kind]
        site_class = getattr(importlib.import_module(module), name)
        if not self.blocks:
            which = f" matching {blocks!r}" if blocks else ""
            raise ValueError(
                f"no supported {site_class.noun}{which} found in {type(model).__name__}. "
                f"Hint: nlanalysis.adapters.list_blocks(model) lists what is found; {site_class.supported}"
            )
        accepted = _site_options(site_class)
        if set(options) - set(accepted):
            unknown = ", ".join(sorted(set(options) - set(accepted)))
            raise TypeError(f"Capture: {unknown} is no option of {site_class.noun}s; they take {', '.join(accepted)}")
        self.model = model
        self.kind = kind
        self.queries = None if queries is None else query_points(queries)
        self.query_space = query_space
        self.stats = stats
        self.keep_records = keep_records
        self.on_record = on_record
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.records: list[SiteRecord] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._calls = 0  # the index of the forward running (or last run): its records' ``call``
        self._started = 0  # forwards started, a failed one too: each has its own index
        self._ran = 0  # site hooks run in this forward (a compiled model runs none: it is said once)
        self._uses: dict[str, int] = {}  # records of each site in this forward: a module called twice has two
        self._warned_twice = False
        self._warned_none = False
        # what the running forward took at its input ("valid", "objects", "size"), and what set_* gave for the next
        # one; sites read the first inside a forward of the model, the second outside one (_valid, _objects, _input_size)
        self._taken: dict[str, Any] = {}
        self._next: dict[str, Any] = {}
        self._in_forward = False  # from the model's input hook to its output (a forward that raised too)
        self.site: Site = site_class(self, **options)

    def __getattr__(self, name: str) -> Any:
        """The site's attributes (``measure_kwargs``, ``shared_calls``, ``keys``, ...) read as the capture's."""
        site = self.__dict__.get("site")
        if site is None or name.startswith("__"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(site, name)

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Capture:
        if self._handles:
            raise RuntimeError("this Capture is already active")
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._on_model_input, with_kwargs=True))
            for index, block in enumerate(self.blocks):
                hook = self._hook(self.site.attach(index, block))
                self._handles.append(block.module.register_forward_hook(hook, with_kwargs=True))
            # after the blocks' hooks: a model that is itself a block has its record made before the forward ends
            self._handles.append(self.model.register_forward_hook(self._on_model_output))
            self._handles.append(self.model.register_forward_hook(self._on_model_exit, always_call=True))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook (idempotent) and drop tensors held between hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.site.close()

    def clear(self) -> None:
        """Forget the records kept so far."""
        self.records.clear()

    def set_valid(self, valid: Tensor | None) -> None:
        """Mark the valid (non-padding) pixels ``[B, H, W]`` (bool) of the next forward's input (that forward only)."""
        check_mask(valid, "Capture.set_valid(valid)")
        self._next["valid"] = valid

    def set_objects(self, labels: Tensor | None) -> None:
        """Instance labels ``[B, H, W]`` (int, 0 = no object, -1 = neither: a crowd region) of the next forward's input
        pixels (that forward only).

        Enables ``att_own_object`` / ``own_object_share``; each cell takes the label at its centre.
        Float labels are taken only where they are whole numbers (TypeError otherwise: truncation would merge objects).
        """
        self._next["objects"] = check_objects(labels, "Capture.set_objects(labels)")

    def set_input_size(self, size: tuple[int, int]) -> None:
        """Tell the capture the input image size ``(H, W)`` of the next forward, whose model input is not a 4-D tensor
        (a 4-D input's own size is read from it; a later forward's is unknown unless given again)."""
        self._next["size"] = (int(size[0]), int(size[1]))

    # -- what a site is measured with ----------------------------------------------------------
    @property
    def _given(self) -> dict[str, Any]:
        """Inside a forward of the model, what it took at its input; outside one (a block run directly), what ``set_*``
        gave since the last forward, left for the next (a chain of direct runs all see it)."""
        return self._taken if self._in_forward else self._next

    @property
    def _valid(self) -> Tensor | None:
        return self._given.get("valid")

    @property
    def _objects(self) -> Tensor | None:
        return self._given.get("objects")

    @property
    def _input_size(self) -> tuple[int, int] | None:
        return self._given.get("size")

    # -- hooks -------------------------------------------------------------------------------
    def _on_model_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """A forward starts: it takes what ``set_*`` gave since the last one."""
        self._in_forward = True
        self._ran = 0
        self._uses = {}
        # its own index, set as it starts: a forward that raised after some sites ran never reached the output hook,
        # and its records (and the caches keyed on the index: a ViT's previous-layer rows) would pass as the next one's
        self._calls, self._started = self._started, self._started + 1
        given, self._next = self._next, {}
        first = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(first, Tensor) and first.dim() == 4:
            given["size"] = (first.shape[-2], first.shape[-1])
        self._taken = given

    def _on_model_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.blocks and not self._ran and not self._warned_none:
            self._warned_none = True
            compiled = type(self.model).__name__ == "OptimizedModule"
            warnings.warn(f"capture: a forward of {type(self.model).__name__} ran none of its {len(self.blocks)} selected blocks, so "
                          "nothing was measured" + ("; a torch.compile'd model runs its compiled graph, not the hooked modules: "
                          "capture the model before compiling it (model._orig_mod)" if compiled else ""), stacklevel=2)  # fmt: skip

    def _on_model_exit(self, module: nn.Module, args: tuple, output: Any) -> None:
        """A forward ends, or raised (``always_call``): sites run from now on are outside a forward, measured with what
        ``set_*`` gives next, under the next forward's index (it is set as that forward starts)."""
        self._in_forward = False
        self._calls = self._started

    def _hook(self, record: Callable[[nn.Module, tuple, dict, Any], SiteRecord]) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            self._ran += 1
            rec = without_grad(record, module, args, kwargs, output)
            if self.keep_records:
                self.records.append(rec)
            if self.on_record is not None:
                self.on_record(rec)

        return hook

    # -- what every site uses ----------------------------------------------------------------
    def stride(self, grid: tuple[int, int]) -> tuple[float, float] | None:
        """Input pixels per cell ``(y, x)`` of a site's query ``grid`` (``None`` while the input size is unknown)."""
        if self._input_size is None:
            return None
        return self._input_size[0] / grid[0], self._input_size[1] / grid[1]

    def cell_masks(self, grid: tuple[int, int], batch: int, given_to: str) -> tuple[Tensor | None, Tensor | None]:
        """The valid-pixel mask and object labels of this forward (outside a forward of the model: those given for the
        next) on a site's query ``grid`` (``None`` where not set), checked against the batch of the site's input
        (``given_to`` names it) and against the model input's ``H x W`` (refused where it is unknown): the masks are per
        input pixel."""
        for what, given in (("valid-pixel mask", self._valid), ("object label map", self._objects)):
            if given is not None and given.shape[0] != batch:
                raise ValueError(f"the {what} has batch {given.shape[0]}, the {given_to} {batch}")
            if self._input_size is not None:
                check_pixels(given, self._input_size, f"the {what}", "the model input")
            elif given is not None:  # a per-pixel map over pixels of unknown number: it would be stretched onto the grid
                raise ValueError(f"the {what} is {given.shape[-2]}x{given.shape[-1]} (H x W) but the size of the model input "
                                 "is unknown (it is not a 4-D tensor, or the site ran outside a forward of the model): call "
                                 "Capture.set_input_size((H, W)) before the forward")  # fmt: skip
        valid = valid_cells(self._valid, grid) if self._valid is not None else None
        objects = cell_centres(self._objects, grid) if self._objects is not None else None
        return valid, objects

    def site_record(self, block: BlockInfo, info: dict[str, Any], grids: tuple[tuple[int, int], tuple[int, int]],
                    **fields: Any) -> SiteRecord:  # fmt: skip
        """A record of ``block`` in this forward, ``grids`` its query and key shapes; ``use`` counts the block's
        earlier runs in the forward (a module called twice: 0, then 1), said once in a warning."""
        use = self._uses[block.name] = self._uses.get(block.name, -1) + 1
        if use == 1 and not self._warned_twice:
            self._warned_twice = True
            warnings.warn(f"capture: {block.name or 'the model'} ran more than once in one forward of the captured model (or the "
                          "model's own forward did not run between its runs); its records have the same name and call, told "
                          "apart by rec.use (0, 1, ...: analyze's `use` column)", stacklevel=2)  # fmt: skip
        return SiteRecord(name=block.name, family=block.adapter.family, info=info, call=self._calls, use=use,
                          input_size=self._input_size, query_shape=grids[0], key_shape=grids[1], **fields)  # fmt: skip

    def query_maps(self, name: str, att: Any) -> QueryMaps:
        """The maps of the capture's query points: ``att`` has ``query_shape``, ``key_shape``, ``device``
        and ``take(index [K])`` -> rows ``[B, K, N_key]`` (:class:`~nlanalysis.blocks.attention.LazyAttention`)."""
        (gh, gw), q, size = att.query_shape, self.queries, self._input_size
        if self.query_space == "feature":
            cells = q.round()  # checked as floats: a huge one would wrap when made an integer
            bad = (cells[:, 0] < 0) | (cells[:, 0] >= gh) | (cells[:, 1] < 0) | (cells[:, 1] >= gw)
            if bad.any():
                y, x = q[bad.nonzero()[0, 0]].tolist()
                raise ValueError(f"query (row={y:g}, col={x:g}) is outside the {gh}x{gw} query grid of block {name}")
            cells = cells.long()
            stride = None if size is None else torch.tensor([size[0] / gh, size[1] / gw], dtype=torch.float64)
            image_yx = None if stride is None else (cells.double() + 0.5) * stride
        else:
            if size is None:
                raise ValueError("query points are in image pixels but the model input size is unknown: "
                                 "call Capture.set_input_size((H, W)) or use query_space='feature'")  # fmt: skip
            h, w = size
            bad = (q[:, 0] < 0) | (q[:, 0] >= h) | (q[:, 1] < 0) | (q[:, 1] >= w)
            if bad.any():
                y, x = q[bad.nonzero()[0, 0]].tolist()
                raise ValueError(f"query (y={y:g}, x={x:g}) is outside the {h}x{w} input image")
            rows, cols = (q[:, 0] * gh / h).floor().long().clamp(max=gh - 1), (q[:, 1] * gw / w).floor().long().clamp(max=gw - 1)
            cells, image_yx = torch.stack([rows, cols], 1), q.clone()
        index = (cells[:, 0] * gw + cells[:, 1]).to(att.device)
        maps = att.take(index).detach().float().cpu()
        maps = maps.reshape(maps.shape[0], maps.shape[1], *att.key_shape)
        return QueryMaps(cells, image_yx, maps)


def capture(model: nn.Module, blocks: str | Iterable[str] | None = None, **kwargs: Any) -> Capture:
    """Shorthand for :class:`Capture` (``with nlanalysis.capture(model) as cap: ...``)."""
    return Capture(model, blocks, **kwargs)
