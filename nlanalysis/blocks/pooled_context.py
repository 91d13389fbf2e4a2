"""Context blocks built on a plain global average pool: squeeze-and-excitation and a pooled FC residual.

In GCNet's framework (Cao et al., arXiv 1904.11492, Sec. 4.1) a context block is
*context modelling* (a pooling over positions) + *transform* + *fusion*. These two pool with
uniform weights, so every position receives the same context vector by construction -- the
question the seed note asks: does a GC block do more than "a fully connected layer with a
residual connection"?

* :class:`SqueezeExcitation2d` (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018,
  arXiv 1709.01507): ``z = x * sigmoid(fc2(relu(fc1(mean_j x_j))))``, multiplicative fusion.
  Keys ``fc1.*``, ``fc2.*`` (1x1 convs with bias), as torchvision's ``SqueezeExcitation`` and
  timm's ``SEModule``; default PyTorch init, as both.
* :class:`PooledResidual2d`: ``z = x + fc(mean_j x_j)``, one ``C -> C`` 1x1 conv, additive
  fusion (a GC block with average pooling and no bottleneck); ``fc`` starts at zero, so the
  block starts as the identity, as GC and SNL do.

Neither has an attention map over positions (the pool is uniform), so no adapter reads them:
capture, extract and ``analyze`` list no site for them and they are compared through their
trained mIoU only.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .non_local import _check_input

__all__ = ["PooledResidual2d", "SqueezeExcitation2d"]


def _pool(x: Tensor) -> Tensor:
    return x.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]


class SqueezeExcitation2d(nn.Module):
    """SE block ``z = x * sigmoid(W_2 relu(W_1 avgpool(x)))`` (Hu et al. 2018).

    Shapes: ``x`` ``[B, C, H, W]`` -> ``[B, C, H, W]``.

    Args:
        in_channels: channels ``C``.
        ratio: hidden channels ``max(int(C * ratio), 1)`` (Hu et al.'s ``1 / r``, r = 16 there).
    """

    _abbr_ = "se_block"

    def __init__(self, in_channels: int, ratio: float = 1 / 16) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.ratio = ratio
        self.planes = max(int(in_channels * ratio), 1)
        self.fc1 = nn.Conv2d(in_channels, self.planes, kernel_size=1)
        self.fc2 = nn.Conv2d(self.planes, in_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.in_channels)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(_pool(x)))))


class PooledResidual2d(nn.Module):
    """``z = x + W avgpool(x)``, broadcast over positions: global average pool -> FC -> add.

    Shapes: ``x`` ``[B, C, H, W]`` -> ``[B, C, H, W]``.

    Args:
        in_channels: channels ``C``.
        zeros_init: initialise ``W`` (``fc``, ``C -> C``) to zero so the block starts as identity.
    """

    _abbr_ = "pooled_residual"

    def __init__(self, in_channels: int, zeros_init: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.fc = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        if zeros_init:
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.in_channels)
        return x + self.fc(_pool(x))
