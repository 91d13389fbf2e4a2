"""Non-local block with the four pairwise functions of the NL paper.

Paper: Wang et al., "Non-local Neural Networks", CVPR 2018, arXiv 1711.07971.
Layout and math follow mmcv's ``NonLocal2d`` (``mmcv/cnn/bricks/non_local.py``), so a state
dict saved from an mmcv block (and from mmdetection / mmsegmentation models that use it) loads
here with ``strict=True`` and gives the same output. Differences from mmcv, on purpose:

* every mode trains: mmcv's concatenation mode divides a ReLU output in place and fails on
  backward; here nothing is modified in place;
* the attention maps are available without running the block: :meth:`NonLocal2d.attention`.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import PAIRWISE_MODES, PairwiseAttention
from .conv import ConvNorm

__all__ = ["NonLocal2d", "mmcv_style_attention", "pairwise_attention"]


class NonLocal2d(nn.Module):
    """Non-local block ``z = x + W_z(sum_j f(x_i, x_j) g(x_j))``.

    Shapes: ``x`` ``[B, C, H, W]`` -> ``z`` ``[B, C, H, W]``; attention ``[B, H*W, N_k]`` with
    ``N_k = H*W``, or ``ceil``-free ``(H//2)*(W//2)`` with ``sub_sample``.

    Args:
        in_channels: channels ``C`` of the input.
        reduction: ``C' = max(C // reduction, 1)`` channels of ``g``, ``theta``, ``phi``.
        use_scale: embedded Gaussian divides logits by ``sqrt(C')``.
        mode: ``gaussian``, ``embedded_gaussian``, ``dot_product`` or ``concatenation``.
        sub_sample: 2x2 max-pool on ``g`` and ``phi`` (keys at half resolution).
        norm_cfg: optional norm after ``conv_out`` (mmcv style, e.g. ``{"type": "BN"}``).
        zeros_init: initialise the output transform to zero (block starts as identity).
        std: std of the normal init of ``g``/``theta``/``phi`` (mmcv: 0.01).
        logit_scale: overrides the factor on the (embedded) Gaussian logits, for layouts that
            scale differently: timm's ``NonLocalAttn`` uses ``C**-0.5``, AlexHex7's blocks 1, the
            GCNet repository's ``NonLocal2D`` (a known bug) ``sqrt(C')``. ``None``: mmcv's rule.
        out_bias: bias on ``conv_out.conv``; ``None`` means only without a norm (mmcv).
    """

    _abbr_ = "nonlocal_block"

    def __init__(
        self,
        in_channels: int,
        reduction: int = 2,
        use_scale: bool = True,
        mode: str = "embedded_gaussian",
        sub_sample: bool = False,
        norm_cfg: dict[str, Any] | None = None,
        zeros_init: bool = True,
        std: float = 0.01,
        logit_scale: float | None = None,
        out_bias: bool | None = None,
    ) -> None:
        super().__init__()
        if mode not in PAIRWISE_MODES:
            raise ValueError(f"NonLocal2d mode must be one of {PAIRWISE_MODES}, got {mode!r}")
        self.in_channels = in_channels
        self.reduction = reduction
        self.use_scale = use_scale
        self.mode = mode
        self.sub_sample = sub_sample
        self.inter_channels = max(in_channels // reduction, 1)
        self.logit_scale = logit_scale
        c, ci = in_channels, self.inter_channels

        pool = nn.MaxPool2d(kernel_size=(2, 2))
        self.g: nn.Module = ConvNorm(c, ci)
        self.conv_out = ConvNorm(ci, c, norm_cfg=norm_cfg, bias=out_bias)
        if mode != "gaussian":
            self.theta = ConvNorm(c, ci)
            self.phi: nn.Module = ConvNorm(c, ci)
        if mode == "concatenation":
            self.concat_project = ConvNorm(2 * ci, 1, bias=False, relu=True)
        if sub_sample:
            self.g = nn.Sequential(self.g, pool)
            self.phi = nn.Sequential(self.phi, pool) if mode != "gaussian" else pool
        self.reset_parameters(std=std, zeros_init=zeros_init)

    def reset_parameters(self, std: float = 0.01, zeros_init: bool = True) -> None:
        """mmcv's init: normal(std) for g/theta/phi, zero (or normal) output transform."""
        for name in ("g", "theta", "phi"):
            conv = self._conv(name)
            if conv is not None:
                nn.init.normal_(conv.weight, std=std)
                nn.init.zeros_(conv.bias)
        last = self.conv_out.norm if self.conv_out.norm is not None else self.conv_out.conv
        if zeros_init:
            nn.init.zeros_(last.weight)
        else:
            nn.init.normal_(last.weight, std=std)
        if last.bias is not None:
            nn.init.zeros_(last.bias)

    def _conv(self, name: str) -> nn.Conv2d | None:
        module = getattr(self, name, None)
        if isinstance(module, nn.Sequential):
            module = module[0]
        return module.conv if isinstance(module, ConvNorm) else None

    # -- attention -------------------------------------------------------------------------
    def attention(self, x: Tensor) -> PairwiseAttention:
        """Lazy per-query attention maps for input ``x`` ``[B, C, H, W]``."""
        return mmcv_style_attention(self, x)

    def attention_maps(self, x: Tensor) -> Tensor:
        """All attention maps ``[B, H*W, N_k]`` (N x N memory; see :meth:`attention`)."""
        return self.attention(x).full()

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        att = self.attention(x)
        g_x = self.g(x).flatten(2).transpose(1, 2)  # [B, N_k, C']
        if att.mode in ("gaussian", "embedded_gaussian"):
            # fused kernel: never materialises the N x N map during training / inference
            y = F.scaled_dot_product_attention(
                att.query.unsqueeze(1), att.key.transpose(1, 2).unsqueeze(1), g_x.unsqueeze(1), scale=att.scale
            ).squeeze(1)
        else:
            y = torch.matmul(att.full(), g_x)
        b, _, h, w = x.shape
        y = y.transpose(1, 2).reshape(b, self.inter_channels, h, w)
        return x + self.conv_out(y)


def _check_input(x: Tensor, channels: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D input [B, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"expected {channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")


def pairwise_attention(mode: str, query: Tensor, key: Tensor, scale: float = 1.0, concat: Tensor | None = None) -> PairwiseAttention:
    """The maps of an NL block from its query and key embeddings, whatever its codebase (mmcv, AlexHex7, timm, ours).

    Args:
        mode: one of :data:`~nlanalysis.blocks.attention.PAIRWISE_MODES`.
        query: ``[B, C', H, W]`` (``theta(x)``; ``x`` for ``gaussian``).
        key: ``[B, C', H_k, W_k]`` (``phi(x)``, perhaps sub-sampled; ``x`` or its pooling for ``gaussian``).
        scale: the factor on the (embedded) Gaussian logits.
        concat: ``concatenation``: the ``[2C']`` weight of the bias-free 1x1 conv on ``[theta_i; phi_j]``
            before the ReLU, which splits into a query term and a key term ``ReLU(w_q . theta_i + w_k . phi_j)``.
    """
    grid, key_shape = (query.shape[-2], query.shape[-1]), (key.shape[-2], key.shape[-1])
    query, key = query.flatten(2).transpose(1, 2), key.flatten(2)  # [B, N, C'], [B, C', N_k]
    if mode == "concatenation":
        ci = concat.numel() // 2
        query = query @ concat[:ci, None]  # [B, N, 1]
        key = (concat[ci:, None] * key).sum(dim=1, keepdim=True)  # [B, 1, N_k]
    return PairwiseAttention(mode, query, key, grid, key_shape, scale=scale)


def mmcv_style_attention(block: nn.Module, x: Tensor) -> PairwiseAttention:
    """Per-query attention of any block laid out like mmcv's ``NonLocal2d``.

    Works on this project's :class:`NonLocal2d` and on mmcv's own instances: it reads only the
    attributes both share (``mode``, ``use_scale``, ``sub_sample``, ``in_channels``,
    ``inter_channels``, ``theta``, ``phi``, ``concat_project``) and calls their submodules.

    Args:
        block: the NL block.
        x: its input ``[B, C, H, W]``.
    """
    _check_input(x, block.in_channels)
    mode = block.mode
    scale = 1.0
    if getattr(block, "logit_scale", None) is not None:
        scale = block.logit_scale
    elif mode == "embedded_gaussian" and block.use_scale:
        scale = block.inter_channels**-0.5
    concat = block.concat_project.conv.weight.flatten() if mode == "concatenation" else None
    key = block.phi(x) if mode != "gaussian" or block.sub_sample else x
    return pairwise_attention(mode, x if mode == "gaussian" else block.theta(x), key, scale, concat)
