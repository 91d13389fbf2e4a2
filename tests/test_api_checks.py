"""What ``analyze`` / ``capture`` refuse of a notebook user's mistakes, with errors that say what to do:
masks and labels of another shape than the images, float labels that are not whole numbers, a batch
that is empty or not a ``[B, C, H, W]`` tensor, and options out of range; and that ``analyze`` measures a
train-mode model as in eval mode, leaving it as it was."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn

from helpers import randomize_
from nlanalysis import analyze, capture
from nlanalysis.blocks import NonLocal2d

H, W = 32, 48  # not square: a transposed mask is a different shape


@pytest.fixture
def nl_model():
    torch.manual_seed(0)
    return randomize_(nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), NonLocal2d(8)), std=0.5).eval()


def _entry(name: str):
    return getattr(importlib.import_module(f"nlanalysis.{name}"), name)


def _images(b: int = 2) -> torch.Tensor:
    return torch.randn(b, 3, H, W, generator=torch.Generator().manual_seed(1))


def _labels(b: int = 2) -> torch.Tensor:
    labels = torch.zeros(b, H, W, dtype=torch.long)
    labels[:, :, : W // 3], labels[:, :, W // 3 : 2 * W // 3], labels[:, :, 2 * W // 3 :] = 1, 2, 3
    return labels


# -- masks and labels: per input pixel -------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, W, H), (2, 7, 7), (2, H // 4, W // 4)], ids=["transposed", "7x7", "grid"])
@pytest.mark.parametrize("arg", ["valid", "objects"])
@pytest.mark.parametrize("entry", ["analyze", "analyze_vit"])
def test_a_mask_of_another_h_w_than_the_images_is_refused(nl_model, entry, arg, shape):
    mask = torch.ones(shape, dtype=torch.bool if arg == "valid" else torch.long)
    with pytest.raises(ValueError, match=rf"{entry}\({arg}=...\) is {shape[1]}x{shape[2]} \(H x W\) but the images' H x W is {H}x{W}"):
        _entry(entry)(nl_model, _images(), **{arg: mask})


@pytest.mark.parametrize("arg", ["valid", "objects"])
def test_capture_refuses_a_mask_of_another_h_w_than_the_forward_input(nl_model, arg):
    mask = torch.ones(2, W, H, dtype=torch.bool if arg == "valid" else torch.long)
    what = "valid-pixel mask" if arg == "valid" else "object label map"
    with capture(nl_model) as cap, torch.no_grad():
        getattr(cap, f"set_{arg}")(mask)
        with pytest.raises(ValueError, match=rf"the {what} is {W}x{H} \(H x W\) but the model input is {H}x{W}"):
            nl_model(_images())
        getattr(cap, f"set_{arg}")(mask.transpose(1, 2))
        nl_model(_images())  # the right shape: measured
    assert len(cap.records) == 1


def test_object_labels_of_another_batch_than_the_images_are_refused(nl_model):
    for b in (3, 1):
        with pytest.raises(ValueError, match=rf"analyze\(objects=...\): the label map has batch {b}, the images 2"):
            analyze(nl_model, _images(), objects=_labels(b))


def test_float_labels_count_only_when_whole_numbers(nl_model):
    labels = _labels()
    want = analyze(nl_model, _images(), objects=labels)[["att_own_object", "own_object_share"]]
    assert want["own_object_share"].round(6).tolist() == [round(1 / 3, 6)] * 2  # three objects
    got = analyze(nl_model, _images(), objects=labels.float())[["att_own_object", "own_object_share"]]
    assert got.equals(want)
    halves = labels.float() / 2  # 0.5 / 1.0 / 1.5: truncation would merge two objects
    for bad in (halves, torch.full((2, H, W), float("nan")), torch.full((2, H, W), float("inf"))):
        with pytest.raises(TypeError, match=r"analyze\(objects=...\): the object labels must be integers .* not whole numbers"):
            analyze(nl_model, _images(), objects=bad)
        with pytest.raises(TypeError, match=r"Capture\.set_objects\(labels\): the object labels must be integers"):
            capture(nl_model).set_objects(bad)


def test_numpy_labels_are_refused_with_the_conversion(nl_model):
    with pytest.raises(TypeError, match=r"got a ndarray; pass torch\.from_numpy\(labels\)"):
        analyze(nl_model, _images(), objects=_labels().numpy())
    with pytest.raises(TypeError, match=r"Capture\.set_objects\(labels\): .* got a ndarray"):
        capture(nl_model).set_objects(_labels().numpy())


# -- the batch -------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", ["analyze", "analyze_vit"])
def test_an_empty_batch_is_refused(nl_model, entry):
    with pytest.raises(ValueError, match=rf"{entry}: empty batch"):
        _entry(entry)(nl_model, _images()[:0])


@pytest.mark.parametrize("images", [list(_images()), _images().numpy()], ids=["list", "numpy"])
def test_images_not_a_tensor_are_refused(nl_model, images):
    with pytest.raises(TypeError, match=r"analyze: expected a \[B, C, H, W\] tensor of images, got a (list|ndarray)"):
        analyze(nl_model, images)


def test_one_image_without_its_batch_dimension_is_refused_with_the_fix(nl_model):
    with pytest.raises(ValueError, match=r"got shape \[3, 32, 48\] \(one image: add the batch dimension, images\[None\]\)"):
        analyze(nl_model, _images()[0])
    assert len(analyze(nl_model, _images()[0][None])) == 1


# -- options ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True])
def test_batch_size_must_be_a_positive_int(nl_model, batch_size):
    with pytest.raises(ValueError, match=r"analyze\(batch_size=...\) must be an int >= 1"):
        analyze(nl_model, _images(), batch_size=batch_size)


@pytest.mark.parametrize("jsd_pairs", [-5, 1.5, None])
@pytest.mark.parametrize("kernels", ["auto", "eager"])
def test_jsd_pairs_must_be_a_non_negative_int(nl_model, jsd_pairs, kernels):
    with pytest.raises(ValueError, match=r"jsd_pairs must be an int >= 0"):
        analyze(nl_model, _images(), jsd_pairs=jsd_pairs, kernels=kernels)
    assert analyze(nl_model, _images(), jsd_pairs=0, kernels=kernels)["att_jsd"].isna().all()


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5])
@pytest.mark.parametrize("kw", [{}, dict(kernels="native"), dict(kernels="eager", share_softmax=False)], ids=["auto", "native", "eager"])
def test_chunk_size_must_be_a_positive_int_on_every_path(nl_model, chunk_size, kw):
    with pytest.raises(ValueError, match=r"chunk_size must be an int >= 1"):
        analyze(nl_model, _images(), chunk_size=chunk_size, **kw)


def test_share_softmax_must_be_a_bool(nl_model):
    with pytest.raises(TypeError, match=r"share_softmax must be True or False, got 'no'"):
        analyze(nl_model, _images(), share_softmax="no")


def test_analyze_without_statistics_is_refused(nl_model):
    with pytest.raises(ValueError, match=r"analyze\(stats=False\): .* use nlanalysis\.capture"):
        analyze(nl_model, _images(), stats=False)


# -- the model's mode ------------------------------------------------------------------------------
def test_a_train_mode_model_is_measured_in_eval_mode_and_left_as_it_was():
    torch.manual_seed(0)
    model = randomize_(nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.BatchNorm2d(8), nn.Dropout(0.5), NonLocal2d(8)), std=0.5)
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    want = analyze(model.eval(), _images(4))
    model.train()
    model[1].eval()  # a mix of modes: each module's own flag comes back
    modes, state = [m.training for m in model.modules()], {k: v.clone() for k, v in model.state_dict().items()}
    got = analyze(model, _images(4))
    assert got.equals(want)
    one = analyze(model, _images(4), batch_size=1)  # the same maps whatever the batch (the JSD's sampled pairs aside)
    assert np.allclose(one[["att", "input", "att_entropy"]], want[["att", "input", "att_entropy"]], rtol=1e-5, atol=1e-7)
    assert [m.training for m in model.modules()] == modes and modes[:4] == [True, True, False, True]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # no running statistics updated


class _FreezesInEval(nn.Sequential):
    def train(self, mode: bool = True) -> "_FreezesInEval":  # a model whose train() does more than set flags
        super().train(mode)
        self[0].requires_grad_(mode)
        return self


def test_a_models_own_train_is_called_to_restore_its_mode():
    model = _FreezesInEval(nn.Conv2d(3, 8, 4, stride=4), randomize_(NonLocal2d(8), std=0.5)).train()
    analyze(model, _images())
    assert model.training and all(p.requires_grad for p in model[0].parameters())


# -- a block run twice in one forward --------------------------------------------------------------
class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.nl = nn.Conv2d(3, 8, 4, stride=4), randomize_(NonLocal2d(8), std=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nl(self.nl(self.stem(x)))


def test_a_block_run_twice_in_a_forward_gives_rows_told_apart_by_use(nl_model):
    torch.manual_seed(0)
    model = _Twice().eval()
    with pytest.warns(UserWarning, match=r"nl ran more than once in one forward .* told apart by rec\.use"):
        frame = analyze(model, _images())
    assert frame[["image", "block", "use"]].values.tolist() == [[0, "nl", 0], [1, "nl", 0], [0, "nl", 1], [1, "nl", 1]]
    # the first run is the forward's first site (no cross-site value); the second is compared with it, each its own
    assert frame[frame["use"] == 0]["cross_site_cos"].isna().all() and frame[frame["use"] == 1]["cross_site_cos"].notna().all()
    with torch.no_grad():
        inner = model.nl(model.stem(_images()))  # the second run's input: the first's output
    second = analyze(nl_model.__class__(nn.Identity(), model.nl).eval(), inner)  # the block alone, on that input
    assert np.allclose(frame[frame["use"] == 1][["att", "input"]], second[["att", "input"]], rtol=1e-5, atol=1e-9)
    assert "use" not in analyze(nl_model, _images()).columns  # only where a block ran twice
