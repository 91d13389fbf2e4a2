"""What a capture keeps between forwards: nothing a later forward would be measured with by mistake.

The output projection's Gram matrices follow any in-place change of the weights (an EMA's ``.data.copy_``
too); the valid-pixel mask, object labels and input size given for one forward are not reused by the next.
"""
import copy

import pytest
import torch

from helpers import randomize_
from nlanalysis.capture.heads import ViTCapture

timm_vit = pytest.importorskip("timm.models.vision_transformer")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _timm():
    model = timm_vit.VisionTransformer(img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=4, num_classes=0,
                                       qkv_bias=True, init_values=0.5)  # fmt: skip
    return randomize_(model, std=0.2).eval()


def _outputs(model, x, **options):
    """Each layer's per-head ``output`` statistics ``[B, heads]`` of one forward of ``model``."""
    with torch.no_grad(), ViTCapture(model, jsd_pairs=0, **options) as cap:
        model(x)
    return [rec.stats.output[:, :-1] for rec in cap.records]


def _ema_step(model, seed: int) -> None:
    """What an EMA of the weights does: ``.data.copy_``, which leaves the parameters' version counters as they were."""
    g = torch.Generator().manual_seed(seed)
    for blk in model.blocks:
        for p in (blk.attn.proj.weight, blk.ls1.gamma):
            version = p._version
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)
            assert p._version == version  # what a cache keyed on the version misses


@pytest.mark.parametrize("share", [True, False])
def test_per_head_outputs_follow_weights_changed_in_place_between_forwards(share):
    model, x = _timm(), torch.randn(2, 3, 28, 28)
    with torch.no_grad(), ViTCapture(model, jsd_pairs=0, share_softmax=share) as cap:
        model(x)
        _ema_step(model, 7)
        model(x)
    got = [rec.stats.output[:, :-1] for rec in cap.records if rec.call == 1]
    want = _outputs(copy.deepcopy(model), x, share_softmax=share)  # a new module: nothing of the old weights is kept for it
    for before, after, new in zip(cap.records[:2], got, want, strict=True):
        assert not torch.allclose(before.stats.output[:, :-1], new)  # the new weights do change the per-head outputs
        torch.testing.assert_close(after, new, rtol=1e-5, atol=1e-6)


def test_per_head_outputs_follow_weights_changed_between_captures():
    model, x = _timm(), torch.randn(2, 3, 28, 28)
    _outputs(model, x)
    _ema_step(model, 8)
    for got, want in zip(_outputs(model, x), _outputs(copy.deepcopy(model), x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
