"""The resize of ``prepare_image`` against mmcv's contract: ``Resize(scale=(w, h), keep_ratio=False)`` is
``mmcv.imresize(img, (w, h))`` for every image (a portrait one is stretched to landscape too), and
``keep_ratio=True`` is ``mmcv.imrescale`` (fit inside the long and short side, either orientation)."""
import numpy as np
import pytest

from nlanalysis.checkpoints import Preprocess
from nlanalysis.data import prepare_image
from nlanalysis.data.transforms import resized_size


@pytest.mark.parametrize("h, w", [(600, 1000), (1000, 600), (700, 700)])
def test_keep_ratio_false_resizes_every_image_to_the_configs_w_by_h(h, w):
    pre = Preprocess(scale=(1333, 800), keep_ratio=False, pad_divisor=0)
    assert resized_size(h, w, pre) == (800, 1333)  # (H, W) from the config's (w, h), whatever the orientation
    assert prepare_image(np.zeros((h, w, 3), np.uint8), pre).size == (800, 1333)
    mmcv = pytest.importorskip("mmcv", reason="mmcv (the bench extra) for its own resize")
    assert mmcv.imresize(np.zeros((h, w, 3), np.uint8), (1333, 800)).shape[:2] == (800, 1333)


@pytest.mark.parametrize("h, w", [(600, 1000), (1000, 600), (427, 640), (480, 2000)])
def test_keep_ratio_true_is_mmcvs_rescale(h, w):
    pre = Preprocess(scale=(1333, 800), keep_ratio=True, pad_divisor=0)
    factor = min(1333 / max(h, w), 800 / min(h, w))  # mmcv.rescale_size: fit inside the long and the short side
    assert resized_size(h, w, pre) == (int(h * factor + 0.5), int(w * factor + 0.5))
    mmcv = pytest.importorskip("mmcv", reason="mmcv (the bench extra) for its own rescale")
    assert mmcv.imrescale(np.zeros((h, w, 3), np.uint8), (1333, 800)).shape[:2] == resized_size(h, w, pre)


def test_an_mmdet3_data_preprocessor_that_does_not_flip_leaves_the_model_bgr():
    """mmengine's ImgDataPreprocessor has bgr_to_rgb=False by default: images stay BGR as cv2 loads them, so a config that
    states mean/std but no flip means a BGR model; rgb_to_bgr=True flips them (to RGB, from cv2's BGR)."""
    from nlanalysis.checkpoints.config import parse_config_text
    from nlanalysis.checkpoints.preprocess import preprocess_from_config

    def to_rgb(dp: str) -> bool:
        return preprocess_from_config(parse_config_text(f"model = dict(data_preprocessor=dict({dp}))"), "cfg").to_rgb

    assert not to_rgb("mean=[1., 2., 3.], std=[4., 5., 6.]")
    assert to_rgb("mean=[1., 2., 3.], std=[4., 5., 6.], bgr_to_rgb=True")
    assert not to_rgb("mean=[1., 2., 3.], std=[4., 5., 6.], bgr_to_rgb=False")
    assert to_rgb("mean=[1., 2., 3.], std=[4., 5., 6.], rgb_to_bgr=True")
    assert to_rgb("mean=[1., 2., 3.], std=[4., 5., 6.], bgr_to_rgb=False, rgb_to_bgr=True")  # either flag flips
    assert to_rgb("pad_size_divisor=32")  # no normalisation stated: the default (RGB) stays
