"""reports/controls/planted.py: the planted own-group block of PLAN.md, checked against hand computations
on a small untrained SceneNet (no trained weights)."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nlanalysis.models import SceneNet
from nlanalysis.train.data import normalize, scene_preprocess
from nlanalysis.train.variants import variant_arch

_spec = importlib.util.spec_from_file_location("planted", Path(__file__).parents[1] / "reports/controls/planted.py")
planted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(planted)


@pytest.fixture()
def net_block_features():
    torch.manual_seed(0)
    model = SceneNet(variant_arch("embedded_gaussian")).eval()
    block = model.layer1[1]
    images = torch.randint(0, 256, (3, 3, 112, 112), dtype=torch.uint8)
    return model, block, planted.block_inputs(model, block, images, scene_preprocess(112))


def _by_hand(rows: torch.Tensor, x: torch.Tensor, s: float) -> torch.Tensor:
    h = torch.einsum("kc,bcn->bnk", rows.double(), x.flatten(2).double())  # the probe on each position
    return s * h @ h.transpose(1, 2)  # [B, N, N] logits s * (h_i . h_j)


def test_block_inputs_are_what_the_block_sees(net_block_features):
    model, block, x = net_block_features
    assert x.shape == (3, block.in_channels, 14, 14)
    torch.manual_seed(1)
    with torch.no_grad():  # the stem and layer1's first residual block, run by hand on the same images
        images = torch.randint(0, 256, (1, 3, 112, 112), dtype=torch.uint8)
        inp = normalize(images, scene_preprocess(112))
        expected = model.layer1[0](model.stem(inp))
    got = planted.block_inputs(model, block, images, scene_preprocess(112))
    torch.testing.assert_close(got, expected)


def test_planted_logits_are_s_times_probe_products(net_block_features):
    _, block, x = net_block_features
    rows = torch.randn(2, block.in_channels, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    s = 2.7
    planted.plant(block, rows, s, x)
    with torch.no_grad():
        maps = block.attention_maps(x).double()
    torch.testing.assert_close(maps, torch.softmax(_by_hand(rows, x, s), -1), atol=1e-5, rtol=1e-4)
    for conv in (block.theta.conv, block.phi.conv):
        assert conv.weight[2:].abs().max() == 0 and conv.bias.abs().max() == 0
    torch.testing.assert_close(block.theta.conv.weight, block.phi.conv.weight, rtol=0, atol=0)


def test_ridge_probe_matches_the_augmented_least_squares():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 8)) + 0.5, rng.normal(size=(200, 2))
    lam = 1e-3 * np.trace(x.T @ x) / 8
    aug_x, aug_y = np.vstack([x, math.sqrt(lam) * np.eye(8)]), np.vstack([y, np.zeros((8, 2))])
    expected = np.linalg.lstsq(aug_x, aug_y, rcond=None)[0].T
    got = planted.ridge_probe(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)
    r2 = planted.r_squared(torch.from_numpy(expected), torch.from_numpy(x), torch.from_numpy(y))
    pred = x @ expected.T
    assert r2 == pytest.approx(1 - ((y - pred) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def test_twin_has_the_probes_norm_and_another_direction():
    probe = torch.randn(2, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.3
    twin = planted.twin_rows(probe)
    assert torch.linalg.matrix_norm(twin).item() == pytest.approx(torch.linalg.matrix_norm(probe).item(), rel=1e-12)
    assert torch.equal(twin, planted.twin_rows(probe))  # seed 0: the same twin every time
    cos = (twin * probe).sum() / (twin.norm() * probe.norm())
    assert abs(cos.item()) < 0.5


def test_entropy_matching_hits_the_target(net_block_features):
    _, block, x = net_block_features
    rows = torch.randn(2, block.in_channels, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    target = math.log(14 * 14) - 0.8
    s, reached = planted.match_entropy(block, rows, x, target)
    p = torch.softmax(_by_hand(rows, x, s), -1)  # the entropy of the hand-computed maps at the chosen s
    by_hand = float(-(p * torch.log(p.clamp_min(1e-300))).sum(-1).mean())
    assert by_hand == pytest.approx(target, abs=1e-4)
    assert reached == pytest.approx(target, abs=1e-6)
    with pytest.raises(ValueError, match="outside"):
        planted.match_entropy(block, rows, x, math.log(14 * 14) + 0.1)  # above the uniform map's: unreachable


def _copy_sets(src_names, kind, root, edit=None):
    import shutil

    import pandas as pd

    kept = Path(__file__).parents[1] / "reports/controls/runs/query-specific-v2"
    for seed, name in enumerate(src_names):
        out = root / f"{kind}_s{seed}"
        shutil.copytree(kept / name, out)
        if edit is not None:
            frame = pd.read_csv(out / "metrics.csv")
            edit(frame)
            frame.to_csv(out / "metrics.csv", index=False)


def test_read_check_reads_the_kept_v2_sets_as_the_controls_report_does(tmp_path, capsys):
    """v2's trained embedded-Gaussian finals as the 'planted' sets (no own-group preference shown, att below
    its control: the controls report's reading) fail the check; the same sets with the lift doubled and att
    raised above the control pass it, unless the twins read own-group attention too."""
    eg = [f"embedded_gaussian_s{s}" for s in range(3)]
    _copy_sets(eg, "planted", tmp_path / "a")
    _copy_sets([f"gc_s{s}" for s in range(3)], "twin", tmp_path / "a")
    passes, lines = planted.read_check(tmp_path / "a")
    assert not passes
    assert "no own-group preference shown (same-category lift 1.25 [0.957, 1.63])" in lines[0]
    assert "below its form-matched control" in lines[0] and lines[-1].startswith("The check fails")

    def planted_like(frame):
        frame["same_category_lift"] *= 2.0
        frame["att"] = frame["ctrl_form_att"] + 0.5

    _copy_sets(eg, "planted", tmp_path / "b", planted_like)
    _copy_sets(eg, "twin", tmp_path / "b")
    passes, lines = planted.read_check(tmp_path / "b")
    assert passes and "attends its own group" in lines[0] and "above its form-matched control" in lines[0]
    _copy_sets(eg, "planted", tmp_path / "c", planted_like)
    _copy_sets(eg, "twin", tmp_path / "c", planted_like)
    assert not planted.read_check(tmp_path / "c")[0]
    assert planted.main(["--read", str(tmp_path / "b")]) == 0
    assert "The check passes" in capsys.readouterr().out


def test_item_brightness_is_each_items_mean_gray_and_its_angle_spans_half_the_circle():
    """The brightness twin's label (PLAN session 13): per item the mean RGB gray on its mask, by a direct loop
    over the shipped v2 scenes' annotations; every labelled cell carries one of its image's item levels."""
    from pycocotools.coco import COCO

    from nlanalysis.data.scenes import demo_scenes_path
    from nlanalysis.train.data import load_scene_set

    ann, images = demo_scenes_path("query-specific", (4, 10))
    scenes = load_scene_set(ann, images, limit=3)
    cells, every = planted.item_brightness(ann, scenes.image_ids, scenes.images, (14, 14))
    coco = COCO(str(ann))
    expected = []
    for b, image_id in enumerate(scenes.image_ids):
        gray = scenes.images[b].numpy().astype(np.float64).mean(0) / 255.0
        levels = [gray[coco.annToMask(a).astype(bool)].mean() for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))]
        expected += levels
        seen = cells[b][~torch.isnan(cells[b])].numpy()
        assert seen.size > 0 and np.all(np.min(np.abs(seen[:, None] - np.array(levels)[None]), axis=1) < 1e-12)
    np.testing.assert_allclose(every.numpy(), expected, rtol=1e-12)
    _, value = planted.item_brightness(ann, scenes.image_ids, scenes.images, (14, 14), "max")  # the HSV value: the largest channel
    largest = [(scenes.images[b].numpy().astype(np.float64).max(0) / 255.0)[coco.annToMask(a).astype(bool)].mean()
               for b, i in enumerate(scenes.image_ids) for a in coco.loadAnns(coco.getAnnIds(imgIds=[i]))]  # fmt: skip
    np.testing.assert_allclose(value.numpy(), largest, rtol=1e-12)
    assert np.all(value.numpy() >= every.numpy())
    lo, hi = float(every.min()), float(every.max())
    ends = planted.brightness_angles(torch.tensor([lo, hi, math.nan], dtype=torch.float64), lo, hi)
    np.testing.assert_allclose(ends[:2].numpy(), [[1.0, 0.0], [-1.0, 0.0]], atol=1e-12)
    assert torch.isnan(ends[2]).all()


def test_scene_noise_labels_the_item_cells_from_the_regenerated_draws(tmp_path):
    """The noise twin's label (PLAN session 15): item cells only (as the annotation masks say, independently), values
    0 or within what the generator draws (one box: 0.15-0.35; two overlapping boxes up to 0.35 sqrt 2, which these
    6 scenes do not exceed: three can, rarely); a set whose recorded seed does not regenerate its masks is refused."""
    import gzip
    import json

    from pycocotools.coco import COCO
    from test_data_scenes import idx_bytes, tiny_items

    from nlanalysis.capture import cell_centres
    from nlanalysis.data.scenes import SceneParams, write_scenes

    source = tmp_path / "fmnist"
    source.mkdir()
    images, labels = tiny_items(n_per_class=6, seed=1)
    (source / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (source / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    ann = write_scenes(tmp_path / "val", "val", 6, 0, "query-specific", source=source, params=SceneParams(num_items=(4, 10)))
    ids = list(range(1, 7))
    cells = planted.scene_noise(ann, ids, (14, 14), source=source)
    coco = COCO(str(ann))
    on_item = torch.stack([torch.from_numpy(np.stack([coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=[i]))]).any(0).astype(float))
                           for i in ids])  # fmt: skip
    assert torch.equal(~torch.isnan(cells), cell_centres(on_item, (14, 14)) > 0.5)
    values = cells[~torch.isnan(cells)]
    noisy = values[values > 0]
    assert noisy.numel() > 0 and (values == 0).any()
    assert float(noisy.min()) >= 0.15 - 1e-12 and float(noisy.max()) <= 0.35 * math.sqrt(2) + 1e-12
    angles = planted.noise_angles(torch.tensor([0.0, planted.NOISE_CAP, 2.0, math.nan], dtype=torch.float64))
    np.testing.assert_allclose(angles[:3].numpy(), [[1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]], atol=1e-12)
    data = json.loads(ann.read_text())
    data["info"]["seed"] = 5
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="does not regenerate"):
        planted.scene_noise(ann, ids, (14, 14), source=source)


def test_locality_twin_matches_the_entropy_and_saves_a_loadable_swap(net_block_features, tmp_path):
    """The locality twin (PLAN session 15, 02:00): its maps' entropy by hand (softmax of -d^2 / 2 sigma^2 at the chosen
    sigma) is the target; the checkpoint loads as a SpatialGaussian2d with the trained g and conv_out; the model
    the twin was built from keeps its NL block."""
    from types import SimpleNamespace

    from nlanalysis.blocks import SpatialGaussian2d
    from nlanalysis.checkpoints import load_checkpoint

    model, block, x = net_block_features
    target = math.log(14 * 14) - 1.5
    loaded = SimpleNamespace(model=model, arch=model.arch, preprocess=scene_preprocess(112))
    found = planted.locality_twin(loaded, "layer1.1", block, x, target, tmp_path, tmp_path / "embedded_gaussian_s0.pth", {"x": 1})
    ys, xs = torch.meshgrid(torch.arange(14.0), torch.arange(14.0), indexing="ij")
    c = torch.stack([ys.flatten(), xs.flatten()], -1).double()
    p = torch.softmax(-torch.cdist(c, c) ** 2 / (2 * found["s_locality"] ** 2), -1)
    assert float(-(p * p.log()).sum(-1).mean()) == pytest.approx(target, abs=1e-4)
    assert model.layer1[1] is block
    twin = load_checkpoint(found["ckpt_locality"], truncate=False)
    swapped = twin.block_modules()["layer1.1"]
    assert isinstance(swapped, SpatialGaussian2d) and swapped.sigma == pytest.approx(found["s_locality"])
    assert torch.equal(swapped.g.conv.weight, block.g.conv.weight) and torch.equal(swapped.conv_out.conv.weight, block.conv_out.conv.weight)
    with pytest.raises(ValueError, match="outside"):
        planted.match_sigma(SpatialGaussian2d(block.in_channels), x, math.log(14 * 14) + 0.1)


def test_models_miou_evaluates_every_model_a_build_wrote(net_block_features, tmp_path):
    """``--miou``'s plumbing (which checkpoints, in which order, how printed): one line per seed, the trained final's
    mIoU then each built model's, as ``evaluate`` gives them (``evaluate`` itself is not what this checks)."""
    import gzip
    import json

    from test_data_scenes import idx_bytes, tiny_items

    from nlanalysis.checkpoints import load_checkpoint, save_checkpoint
    from nlanalysis.data.scenes import write_scenes
    from nlanalysis.train.data import load_scene_set
    from nlanalysis.train.loop import evaluate

    model, _, _ = net_block_features
    source = tmp_path / "fmnist"
    source.mkdir()
    images, labels = tiny_items(seed=1)
    (source / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (source / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    val = write_scenes(tmp_path / "val", "val", 4, 0, source=source).parent
    trained = save_checkpoint(tmp_path / "trained.pth", model, scene_preprocess(112))
    torch.nn.init.normal_(model.layer1[1].conv_out.conv.weight, std=1.0)  # another model
    other = save_checkpoint(tmp_path / "other.pth", model, scene_preprocess(112))
    built = tmp_path / "planted.json"
    built.write_text(json.dumps([{"seed": 0, "ckpt": str(trained), "ckpt_planted": str(other)}]))
    scenes = load_scene_set(val / "instances.json", val / "images")
    expected = [evaluate(load_checkpoint(p, truncate=False).model, scenes)[0] for p in (trained, other)]
    assert planted.models_miou(built, val) == [f"- seed 0: mIoU trained {expected[0]:.4f}, planted {expected[1]:.4f}"]
