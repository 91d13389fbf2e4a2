"""``load_checkpoint``: any supported checkpoint -> a truncated model whose NL/GC blocks are named
as in the checkpoint; ``save_checkpoint``: this project's own format.

Formats recognised (by the file's top-level structure, then its keys): :data:`KNOWN_FORMATS`.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..files import atomic_write
from ..models import ResNetArch, ResNetBackbone, SceneNet, SceneNetArch, arch_from_dict, arch_type, build_arch
from .config import check_config_file, parse_config_file, parse_config_text
from .errors import CheckpointError, ConfigLimitError
from .infer import apply_config, apply_overrides, find_backbone_prefix, infer_arch
from .layouts import KEYS_CANNOT_TELL, LAYOUTS, MODE_MODULES, FoundBlock, find_blocks
from .preprocess import Preprocess, preprocess_from_config
from .reading import read_checkpoint_file

__all__ = ["FORMAT_NAME", "KNOWN_FORMATS", "LoadedCheckpoint", "load_checkpoint", "nonfinite_weights", "save_atomic", "save_checkpoint"]

FORMAT_NAME = "nlanalysis-checkpoint"
FORMAT_VERSION = 1
KNOWN_FORMATS = (
    "nlanalysis native ({'format': 'nlanalysis-checkpoint', 'arch', 'state_dict', 'preprocess'})",
    "mmdetection 3.x / mmengine ({'meta': {'cfg', 'mmengine_version'}, 'state_dict', 'message_hub', ...})",
    "mmdetection 2.x / mmcv ({'meta': {'config', 'mmdet_version'}, 'state_dict', 'optimizer'})",
    "GCNet repository / mmdetection 0.x-1.x ({'meta': {'mmdet_version': '0.x'/'1.x'}, 'state_dict'})",
    "{'state_dict': ...} or {'model': ...} wrapper (timm training checkpoints)",
    "plain or DDP ('module.'-prefixed) state dict of a torchvision/timm/mmdet ResNet",
)


@dataclass
class LoadedCheckpoint:
    """A checkpoint rebuilt as a model that runs up to its last NL/GC block.

    Attributes:
        path: the file.
        format: the detected format (one of :data:`KNOWN_FORMATS`, short form).
        model: ``nn.Module`` in eval mode; ``model(images [B, 3, H, W])`` runs the backbone up to the
            residual block holding (or the entry that is) the last NL/GC block.
        arch: the architecture (round-trips into the native format).
        preprocess: the input preprocessing the model expects.
        blocks: dotted names of the NL/GC modules in ``model``, as named in the checkpoint.
        block_layouts: ``{block name: source key layout}`` (``mmcv-nonlocal``, ``alexhex7``, ...).
        unused_keys: checkpoint keys not needed (beyond the last block, neck, heads, classifier).
        missing_keys: harmless keys the model has and the file lacks (``num_batches_tracked``).
        notes: what was assumed, and where settings came from.
        placeholders: ``module.Name`` of objects in the file that were not loaded (safe mode).
        meta: the file's ``meta`` (with placeholders), if any.
        nonfinite: checkpoint keys of the weights the model uses that hold NaN or inf (only
            non-empty when loaded with ``allow_nonfinite=True``).
    """

    path: str
    format: str
    model: nn.Module
    arch: ResNetArch
    preprocess: Preprocess
    blocks: list[str]
    block_layouts: dict[str, str] = field(default_factory=dict)
    unused_keys: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    placeholders: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    nonfinite: list[str] = field(default_factory=list)

    def block_modules(self) -> dict[str, nn.Module]:
        """``{name: module}`` of the NL/GC blocks."""
        modules = dict(self.model.named_modules())
        return {name: modules[name] for name in self.blocks}


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _detect(path: Path, obj: Any) -> tuple[str, dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """``(format, state_dict, meta, whole object)`` of a loaded file."""
    if isinstance(obj, nn.Module):  # a pickled model (only loadable with --trust-checkpoint)
        return "pickled nn.Module", obj.state_dict(), {}, {}
    if not isinstance(obj, dict):
        raise CheckpointError(
            path, f"not a checkpoint: the file holds a {type(obj).__name__}, not a dict of weights. Known formats: "
            + "; ".join(KNOWN_FORMATS)
        )
    if obj.get("format") == FORMAT_NAME:
        return "nlanalysis native", obj.get("state_dict", {}), obj.get("meta") or {}, obj
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    for key in ("state_dict", "model", "state_dict_ema"):
        if _is_state_dict(obj.get(key)):
            sd = obj[key]
            if key != "state_dict":
                fmt = f"{{'{key}': state_dict}} wrapper"
            elif "mmengine_version" in meta or "cfg" in meta or "message_hub" in obj:
                fmt = "mmdetection 3.x (mmengine)"
            elif str(meta.get("mmdet_version", "")).startswith(("0.", "1.")):
                fmt = "GCNet repository / mmdetection 0.x-1.x"
            elif "mmdet_version" in meta or "config" in meta or "mmcv_version" in meta:
                fmt = "mmdetection 2.x (mmcv)"
            elif "arch" in obj or "args" in obj:
                fmt = "timm training checkpoint"
            else:
                fmt = "{'state_dict': state_dict} wrapper"
            return fmt, sd, meta, obj
    if _is_state_dict(obj):
        return "plain state dict", obj, {}, obj
    tensors = sum(isinstance(v, Tensor) for v in obj.values())
    raise CheckpointError(
        path,
        f"unknown layout: top-level keys {sorted(map(str, obj))[:8]} ({tensors} tensors) match no known format. "
        "Known formats: " + "; ".join(KNOWN_FORMATS),
    )


def _closest_match(state_dict: dict[str, Tensor], blocks: list[FoundBlock]) -> str:
    if blocks:
        return f"NL/GC blocks at {', '.join(b.prefix for b in blocks[:3])} but no ResNet stages (layerS.I.conv1.weight) around them"
    heads = sorted({k.split(".")[0] for k in state_dict})[:6]
    if any(k.startswith("backbone.") for k in state_dict):
        return f"an mmdetection-style model (top-level modules {heads}) whose backbone is not a ResNet"
    return f"none (top-level modules {heads})"


def _config_from_meta(path: Path, meta: dict[str, Any], notes: list[str]) -> tuple[dict[str, Any] | None, str]:
    """The config text stored in ``meta`` (mmdetection), parsed; one that is not valid Python is
    ignored with a note, one past a limit refuses the checkpoint (a hostile file must not hang us)."""
    for key in ("cfg", "config"):
        text = meta.get(key)
        if isinstance(text, str) and text.strip():
            try:
                return parse_config_text(text, f"meta['{key}']"), f"the checkpoint's meta['{key}']"
            except ConfigLimitError as err:
                raise CheckpointError(path, f"{err.path}: {err.reason}") from None
            except CheckpointError as err:
                notes.append(f"the checkpoint's {err.path} was ignored: {err.reason}")
                return None, ""
    return None, ""


def nonfinite_weights(
    path: str | os.PathLike[str], used: dict[str, Tensor], allow: bool, origin: dict[str, str] | None = None
) -> list[str]:
    """Names of the used floating-point weights holding NaN or inf (``origin`` maps a key to the
    checkpoint's name for it); refused unless ``allow``: such weights make every image fail, so the
    checkpoint is blamed once, at load (NL/GC and ViT checkpoints alike)."""
    origin = origin or {}
    bad = [key for key, t in used.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad and not allow:
        first = used[bad[0]]
        count = int((~torch.isfinite(first)).sum())
        more = f" and {len(bad) - 1} more tensor(s)" if len(bad) > 1 else ""
        raise CheckpointError(
            path,
            f"weights contain NaN or inf: {count:,} of the {first.numel():,} values of {origin.get(bad[0], bad[0])}{more}; "
            "the checkpoint is broken (diverged training or a damaged file) and every analysis of it would fail",
        )
    return [origin.get(key, key) for key in bad]


def _config_sets_style(cfg: dict[str, Any] | None) -> bool:
    """Whether a config states ``model.backbone.style``."""
    model = (cfg or {}).get("model")
    return isinstance(model, dict) and isinstance(model.get("backbone"), dict) and "style" in model["backbone"]


def _convert(state_dict: dict[str, Tensor], blocks: list[FoundBlock]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Rename keys of non-mmcv block layouts to this project's names; ``{new key: original key}``."""
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state_dict.items():
        new = key
        for b in blocks:
            if key.startswith(b.prefix + "."):
                new = f"{b.prefix}.{b.layout.rename(key[len(b.prefix) + 1 :])}"
                break
        out[new] = value
        origin[new] = key
    return out, origin


def _idle_weights(arch: ResNetArch, blocks: list[FoundBlock], state_dict: dict[str, Tensor], notes: list[str]) -> set[str]:
    """Keys of the modules a block's keys hold that its mode does not use, where the keys allow modes of other modules
    (AlexHex7's 2018 ``lib/non_local.py`` makes theta, phi and concat_project in every mode): left unused, and noted
    in ``notes`` (in place). A mode the keys do not allow keeps them all: the weights check refuses it."""
    modes = {arch.prefix + b.name: b.options.get("mode") for b in arch.blocks if b.type == "NonLocal2d"}
    idle: set[str] = set()
    for found in blocks:
        mode = modes.get(found.prefix)
        if mode not in found.modes:
            continue
        spare = {m for other in found.modes for m in MODE_MODULES[other]} - set(MODE_MODULES[mode])
        keys = [k for k in state_dict if k.startswith(found.prefix + ".") and k[len(found.prefix) + 1 :].split(".")[0] in spare]
        if keys:
            idle.update(keys)
            notes.append(f"{found.prefix}: {', '.join(sorted(spare))} left unused: mode {mode} does not use them (the keys hold "
                         f"them for {', '.join(found.modes)})")  # fmt: skip
    return idle


def _arch_from_keys(path: Path, fmt: str, state_dict: dict[str, Tensor], blocks: list[FoundBlock]) -> tuple[ResNetArch, list[str]]:
    """The architecture a foreign checkpoint's keys describe, and the notes on what was assumed."""
    prefix = find_backbone_prefix(state_dict)
    if prefix is None:
        raise CheckpointError(
            path,
            "unknown layout: no ResNet backbone found (no '<prefix>layerS.I.conv1.weight' keys). "
            f"Known formats: {'; '.join(KNOWN_FORMATS)}. Closest match: {_closest_match(state_dict, blocks)}",
        )
    if not blocks:
        raise CheckpointError(
            path,
            f"no NL/GC block in it ({fmt}, ResNet under {prefix!r}); looked for: "
            + "; ".join(layout.description for layout in LAYOUTS),
        )
    return infer_arch(state_dict, prefix, blocks)


def _apply_settings(arch: ResNetArch, fmt: str, cfg: dict[str, Any] | None, cfg_source: str, notes: list[str]) -> Preprocess:
    """Settle what the keys cannot say (config settings, style, the GCNet repository's logit scale)
    in ``arch``, noting each assumption; the preprocessing the config states (default: mmdetection's)."""
    if fmt.startswith("GCNet"):  # the early GCNet 'ct' option could also put a GC block after the residual add
        for b in arch.blocks:
            if b.type == "ContextBlock" and b.position == "after_conv3":
                notes.append(f"{arch.prefix}{b.name}: position after_conv3 assumed (the early GCNet repository's ct "
                             "insert_pos='after_add' has the same keys: give --config or --position after_add)")  # fmt: skip
    if cfg is not None:
        apply_config(arch, cfg, cfg_source, notes)
    if not _config_sets_style(cfg):
        notes.append("style 'pytorch' assumed (stride on the 3x3 conv; caffe-style checkpoints need --style caffe or --config)")
    if fmt.startswith("GCNet"):
        for b in arch.blocks:
            if b.type == "NonLocal2d" and b.options.get("mode") == "embedded_gaussian" and b.options.get("use_scale", True):
                inter = max(b.in_channels // b.options.get("reduction", 2), 1)
                b.options["logit_scale"] = float(inter) ** 0.5
                notes.append(f"{b.name}: logits multiplied by sqrt(C') as the GCNet repository's NonLocal2D does")
    return (cfg is not None and preprocess_from_config(cfg, cfg_source)) or Preprocess()


def _match_weights(
    path: Path, expected: dict[str, Tensor], converted: dict[str, Tensor], origin: dict[str, str], block_prefixes: list[str]
) -> tuple[list[str], list[str]]:
    """``(missing, unused)`` keys of the converted checkpoint against the model's ``expected`` ones;
    refuses a shape mismatch, a needed weight that is missing, and an NL/GC weight left unused
    (``block_prefixes``: the blocks' names in the model and in the file)."""
    for key, tensor in expected.items():
        found = converted.get(key)
        if found is not None and tuple(found.shape) != tuple(tensor.shape):
            raise CheckpointError(
                path,
                f"shape mismatch at {origin.get(key, key)}: the rebuilt model expects {tuple(tensor.shape)}, "
                f"the checkpoint has {tuple(found.shape)} (check --config / flags)",
            )
    missing = [k for k in expected if k not in converted]
    serious = [k for k in missing if not k.endswith("num_batches_tracked")]
    if serious:
        raise CheckpointError(
            path, f"{len(serious)} weight(s) the model needs are missing, first {serious[:3]} (check --config / flags)"
        )
    unused = [k for k in converted if k not in expected]
    dropped = [origin[k] for k in unused if any(k.startswith(p + ".") for p in block_prefixes)]
    if dropped:
        raise CheckpointError(
            path, f"{len(dropped)} NL/GC weight(s) would be left unused, first {dropped[:3]} (layout or options mismatch)"
        )
    # a weight inside a bottleneck the rebuilt model runs, but not of it: a plugin or layer it does not know (mmdetection's
    # GeneralizedAttention, ...), which would change every feature after it. (Later bottlenecks are not built: theirs are fine.)
    built = {m.group(0) for k in expected if (m := _ENTRY.match(k))}
    stray = [origin.get(k, k) for k in unused if (m := _ENTRY.match(k)) and m.group(0) in built]
    if stray:
        raise CheckpointError(
            path, f"{len(stray)} weight(s) inside the backbone's rebuilt blocks would be left unused, first {stray[:3]}: a plugin or "
            "layer this rebuild does not know (it would change every feature after it)"
        )
    return missing, unused


#: a ResNet bottleneck's key prefix (``backbone.layer3.5.``)
_ENTRY = re.compile(r"^(?:.*\.)?layer\d+\.\d+\.")


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    config: str | os.PathLike[str] | None = None,
    trust: bool = False,
    overrides: dict[str, Any] | None = None,
    truncate: bool = True,
    allow_nonfinite: bool = False,
) -> LoadedCheckpoint:
    """Load a checkpoint of a ResNet with NL/GC blocks and rebuild it up to its last block.

    Args:
        path: the checkpoint file.
        config: an mmdetection config file; it overrides the config stored in the checkpoint (checked first, for every
            format; a checkpoint in this project's format does not use it, and says so in ``notes``).
        trust: allow unrestricted unpickling if the safe loader refuses the file (runs its code).
        overrides: explicit settings that win over config and keys: ``style`` (``pytorch``/
            ``caffe``), ``nl_mode``, ``use_scale`` (bool), ``position`` (plugin position).
        truncate: build only up to the last NL/GC block (``False``: all four stages).
        allow_nonfinite: load weights holding NaN or inf (listed in ``nonfinite``; ``inspect``
            shows them) instead of refusing the checkpoint.

    Raises:
        CheckpointError: one line naming the file: not a checkpoint, truncated/corrupt, unknown
            layout (with the known ones and the closest match), no NL/GC block, shape mismatch
            (key, expected vs found), NL/GC weights the model would not use, weights holding NaN
            or inf (the first such key), a config refused by its limits or no regular file (named, not the checkpoint).
    """
    path = Path(path)
    if config:  # before the checkpoint (it may be large) and for every format: a named pipe is never opened
        check_config_file(config)
    obj, placeholders = read_checkpoint_file(path, trust=trust)
    fmt, state_dict, meta, whole = _detect(path, obj)
    notes: list[str] = []
    cfg = None
    try:
        blocks = find_blocks(state_dict)
        if fmt == "nlanalysis native":
            arch = arch_from_dict(whole["arch"])
            preprocess = Preprocess.from_dict(whole.get("preprocess") or {})
            if config:
                notes.append(f"--config {config} not used: a checkpoint in this project's format states its architecture and preprocessing")
        else:
            arch, notes = _arch_from_keys(path, fmt, state_dict, blocks)
            cfg, cfg_source = (parse_config_file(config), f"--config {config}") if config else _config_from_meta(path, meta, notes)
            preprocess = _apply_settings(arch, fmt, cfg, cfg_source, notes)
        apply_overrides(arch, overrides or {}, notes, {b.prefix: b.modes for b in blocks})
        for b in arch.blocks:
            norm = b.options.get("norm_cfg") or {}
            if norm.get("type") == "GN" and "num_groups" not in norm:
                raise ValueError(f"{b.name}: conv_out is GroupNorm-normed and its num_groups is not in the keys: pass --config "
                                 "(its plugin's norm_cfg=dict(type='GN', num_groups=G))")  # fmt: skip
        model = build_arch(arch, truncate=truncate)
    except CheckpointError:
        raise
    except ValueError as err:
        raise CheckpointError(path, str(err)) from err
    except (TypeError, AttributeError, KeyError, IndexError, ArithmeticError) as err:  # e.g. a config's reduction=0
        what = "checkpoint or config" if cfg is not None else "checkpoint"
        raise CheckpointError(path, f"malformed {fmt} {what} ({type(err).__name__}: {str(err)[:200]})") from err
    if not arch.blocks:
        raise CheckpointError(path, "no NL/GC block in it")
    for note in notes:  # a mode assumed among some the keys allow whose forward passes differ: said where it is seen
        if KEYS_CANNOT_TELL in note:
            warnings.warn(f"{path}: {note}", UserWarning, stacklevel=2)

    idle = _idle_weights(arch, blocks, state_dict, notes)
    converted, origin = _convert({k: v for k, v in state_dict.items() if k not in idle}, blocks)
    expected = model.state_dict()
    block_names = [arch.prefix + b.name for b in arch.blocks]
    missing, unused = _match_weights(path, expected, converted, origin, block_names + [b.prefix for b in blocks])
    used = {k: v for k, v in converted.items() if k in expected}
    nonfinite = nonfinite_weights(path, used, allow_nonfinite, origin)
    model.load_state_dict(used, strict=False)
    model.eval()
    dropped = idle | {origin[k] for k in unused}
    return LoadedCheckpoint(
        path=str(path),
        format=fmt + (" (DDP 'module.' prefix)" if arch.prefix.startswith("module.") else ""),
        model=model,
        arch=arch,
        preprocess=preprocess,
        blocks=block_names,
        block_layouts={b.prefix: b.layout.name for b in blocks},
        unused_keys=[k for k in state_dict if k in dropped],
        missing_keys=missing,
        notes=notes,
        placeholders=placeholders,
        meta=meta if isinstance(meta, dict) else {},
        nonfinite=nonfinite,
    )


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise ValueError(f"{where}: key {k!r} is not a str/int")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not (value is None or isinstance(value, (str, int, float, bool, Tensor))):
        raise ValueError(f"{where}: {type(value).__name__} is not plain data (str/int/float/bool/list/dict/Tensor)")


def _find_arch(model: nn.Module) -> ResNetArch | SceneNetArch:
    for module in model.modules():
        if isinstance(module, (ResNetBackbone, SceneNet)):
            return module.arch
    raise ValueError("save_checkpoint: the model holds no ResNetBackbone or SceneNet; pass arch= explicitly")


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    preprocess: Preprocess | None = None,
    meta: dict[str, Any] | None = None,
    arch: ResNetArch | SceneNetArch | None = None,
) -> Path:
    """Write this project's checkpoint format: architecture + weights + preprocessing, one file.

    The file holds only plain data and tensors, so :func:`load_checkpoint` reads it with
    ``torch.load(weights_only=True)``. It is written to a temporary file and renamed (atomic).

    Args:
        path: destination.
        model: a model from :func:`nlanalysis.models.build_model` (or any module whose
            ``state_dict`` matches ``arch`` with its prefix).
        preprocess: the input preprocessing (default: mmdetection's).
        meta: plain data (str/int/float/bool/list/dict) to keep with it, e.g. training settings.
        arch: the architecture, when ``model`` is not built by :func:`build_model`.
    """
    arch = arch or _find_arch(model)
    meta = dict(meta or {})
    _check_plain(meta, "meta")
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arch": {"type": arch_type(arch), **arch.to_dict()},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "preprocess": (preprocess or Preprocess()).to_dict(),
        "meta": meta,
    }
    return save_atomic(payload, Path(path))


def save_atomic(payload: Any, path: Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, synced, then renamed (:func:`nlanalysis.files.atomic_write`):
    readers see the old file or the new one, never a part, after a power loss too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb", unique=True) as f:
        torch.save(payload, f)
    return path

