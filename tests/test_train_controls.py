"""Issue 16's control variants (SE, pooled FC residual, DANet PAM) and designs: they train, load, and capture
finds the ones with maps."""
from __future__ import annotations

import pytest
import torch

from helpers import randomize_
from nlanalysis.adapters import list_blocks
from nlanalysis.blocks.pooled_context import PooledResidual2d, SqueezeExcitation2d
from nlanalysis.capture import Capture
from nlanalysis.checkpoints import load_checkpoint
from nlanalysis.cli import main
from nlanalysis.data.scenes import demo_scenes_path
from nlanalysis.train import CONTROL_VARIANTS, VARIANTS, TrainConfig, load_scene_set, train_variant
from nlanalysis.train import run as run_module
from nlanalysis.train.run import TrainJob, run_training
from test_data_scenes import source  # noqa: F401  (a fixture: tiny Fashion-MNIST IDX files)


def test_se_and_pooled_residual_follow_their_formulas():
    x = torch.randn(2, 16, 5, 4, generator=torch.Generator().manual_seed(0))
    se = randomize_(SqueezeExcitation2d(16, ratio=1 / 4))
    assert se.fc1.out_channels == 4
    pooled = x.mean((2, 3))  # [B, C]
    hidden = torch.relu(pooled @ se.fc1.weight[:, :, 0, 0].T + se.fc1.bias)
    scale = torch.sigmoid(hidden @ se.fc2.weight[:, :, 0, 0].T + se.fc2.bias)
    torch.testing.assert_close(se(x), x * scale[:, :, None, None])

    block = PooledResidual2d(16)
    assert torch.equal(block(x), x)  # zero init: identity
    randomize_(block)
    added = pooled @ block.fc.weight[:, :, 0, 0].T + block.fc.bias
    torch.testing.assert_close(block(x), x + added[:, :, None, None])
    assert not (block(x) - x).diff(dim=-1).abs().max() > 1e-6  # the same vector at every position


@pytest.fixture(scope="module")
def scenes():
    data = load_scene_set(*demo_scenes_path(), limit=24)
    return data.subset(slice(0, 16)), data.subset(slice(16, 24))


@pytest.mark.parametrize("variant", sorted(CONTROL_VARIANTS))
def test_control_variant_trains_loads_and_capture_sees_maps_only_where_there_are(variant, scenes, tmp_path, capsys):
    assert variant not in VARIANTS  # not in the default job, not shipped
    train, val = scenes
    result = train_variant(variant, train, val, TrainConfig(epochs=1, batch_size=8, snapshots=(1.0,)), tmp_path, progress=False)
    ckpt = load_checkpoint(result.checkpoints[-1])
    assert ckpt.blocks == ["layer1.1"] and ckpt.meta["variant"] == variant
    found = list_blocks(ckpt.model)
    x = torch.randn(1, 3, 112, 112)
    if variant == "danet_pam":
        assert [(b.name, b.family) for b in found] == [("layer1.1", "danet")]
        assert ckpt.model.layer1[1].gamma.item() != 0.0  # it trained
        with torch.no_grad(), Capture(ckpt.model, jsd_pairs=0) as cap:
            ckpt.model(x)
        assert cap.records[0].name == "layer1.1" and cap.records[0].query_shape == (14, 14)
    else:  # one pooled vector for every position: no map, no site
        assert found == []
        with pytest.raises(ValueError, match="no supported NL/GC block"):
            Capture(ckpt.model)
    assert main(["inspect", "--ckpt", str(result.checkpoints[-1])]) == 0
    mode = {"danet_pam": "position_attention", "se": "se", "pooled_fc": "pooled_fc"}[variant]
    assert f"layer1.1: {type(ckpt.model.layer1[1]).__name__} mode={mode} " in capsys.readouterr().out


def test_training_another_design_validates_on_that_design(tmp_path, source):  # noqa: F811
    job = TrainJob.quick(tmp_path, variants=("pooled_fc",), design="query-specific", source=str(source), train_scenes=8,
                         val_scenes=4, progress=False, config=TrainConfig(epochs=1, batch_size=8, snapshots=(1.0,)))  # fmt: skip
    run_training(job)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "pooled_fc_s0.pth")
    assert "val_query-specific_src" in ckpt.meta["val_data"] and "train_query-specific_src" in ckpt.meta["train_data"]  # --source's own


def test_a_rerun_skips_finished_runs_and_refuses_other_settings(tmp_path, scenes, monkeypatch):
    train, _ = scenes
    monkeypatch.setattr("nlanalysis.train.run._train_set", lambda job: train)
    calls = []
    real = run_module.train_variant
    monkeypatch.setattr("nlanalysis.train.run.train_variant", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    config = TrainConfig(epochs=1, batch_size=8, snapshots=(0.0, 1.0))
    job = TrainJob.quick(tmp_path, variants=("baseline", "se"), val_scenes=8, progress=False, config=config)
    first = run_training(job)
    assert calls == ["baseline", "se"]
    (tmp_path / "runs" / "se_s0.json").unlink()  # as if the job had stopped during se
    again = run_training(job)
    assert calls == ["baseline", "se", "se"]
    assert again[again.variant == "baseline"].equals(first[first.variant == "baseline"])
    job.config = TrainConfig(**{**vars(config), "lr": 1e-3})
    with pytest.raises(ValueError, match="other settings or other scenes; use another --out"):
        run_training(job)


def test_cli_snapshots_reach_the_config(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("nlanalysis.cli.train.run_training", lambda job: seen.setdefault("job", job) and 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["train", "--out", str(tmp_path), "--variants", "danet_pam", "--snapshots", "0", "0.5", "1", "--epochs", "2",
              "--image-shortcut"])  # fmt: skip
    assert seen["job"].config.snapshots == [0.0, 0.5, 1.0] and seen["job"].config.epochs == 2
    assert seen["job"].config.image_shortcut is True
    assert seen["job"].variants == ["danet_pam"]


def test_the_default_source_validates_on_the_shipped_scenes_of_the_design(tmp_path):
    from nlanalysis.train.run import _val_set

    job = TrainJob.quick(tmp_path, design="query-specific", val_scenes=4, progress=False)
    assert job.source is None
    val = _val_set(job)
    assert "scenes_val_query_specific" in val.source and not (tmp_path / "data").exists()


def _one_finished_baseline(tmp_path, scenes, monkeypatch) -> TrainJob:
    """A job of one 1-epoch baseline run on ``scenes``, run once."""
    train, val = scenes
    monkeypatch.setattr("nlanalysis.train.run._train_set", lambda job: train)
    monkeypatch.setattr("nlanalysis.train.run._val_set", lambda job: val)
    job = TrainJob.quick(tmp_path, variants=("baseline",), progress=False,
                         config=TrainConfig(epochs=1, batch_size=8, snapshots=(1.0,)))  # fmt: skip
    run_training(job)
    return job


def test_a_rerun_matches_scenes_by_content_not_by_path(tmp_path, scenes, monkeypatch):
    """Moving the scene files (another checkout, the shipped copy of a written set) keeps the finished
    runs; other scenes at the same path are refused."""
    _, val = scenes
    job = _one_finished_baseline(tmp_path, scenes, monkeypatch)
    calls = []
    monkeypatch.setattr("nlanalysis.train.run.train_variant", lambda *a, **k: calls.append(a[0]) / 0)
    moved = val.subset(slice(None))
    moved.source = "/elsewhere/instances.json"
    monkeypatch.setattr("nlanalysis.train.run._val_set", lambda job: moved)
    run_training(job)
    assert calls == []
    changed = val.subset(slice(None))
    changed.images = changed.images.clone()
    changed.images[0, 0, 0, 0] ^= 1
    monkeypatch.setattr("nlanalysis.train.run._val_set", lambda job: changed)
    with pytest.raises(ValueError, match="other settings"):
        run_training(job)


def test_num_items_reaches_the_scenes_and_the_validation_set_is_written(tmp_path, source, monkeypatch):  # noqa: F811
    """``--num-items 4 10`` (issue 16's revised design): the job's train and val scenes are drawn with it (groups of
    up to 5 items, which the shipped (3, 6) cannot give: 2..3), in folders named by it, never the shipped val."""
    import json
    from collections import Counter

    from nlanalysis.train.run import _train_set, _val_set

    seen = {}
    monkeypatch.setattr("nlanalysis.cli.train.run_training", lambda job: seen.setdefault("job", job) and 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["train", "--out", str(tmp_path), "--design", "query-specific", "--num-items", "4", "10"])
    assert seen["job"].num_items == (4, 10)

    job = TrainJob.quick(tmp_path, design="query-specific", source=str(source), train_scenes=20, val_scenes=4, num_items=(4, 10),
                         progress=False)  # fmt: skip
    train, val = _train_set(job), _val_set(job)
    assert "train_query-specific_items4-10_src" in train.source and "val_query-specific_items4-10_src" in val.source
    coco = json.loads(open(train.source).read())
    assert coco["info"]["params"]["num_items"] == [4, 10]
    sizes = Counter((a["image_id"], a["group"]) for a in coco["annotations"])
    assert max(sizes.values()) > 3
    shipped = TrainJob.quick(tmp_path / "default", design="query-specific", val_scenes=4, num_items=(4, 10), progress=False)
    assert _val_set(shipped).source.endswith("scenes_val_query_specific_items4_10/instances.json")  # shipped (v2's)
    other = TrainJob.quick(tmp_path / "other", design="query-specific", source=str(source), val_scenes=4, num_items=(4, 8),
                          progress=False)  # fmt: skip
    assert "val_query-specific_items4-8_src" in _val_set(other).source  # not shipped: its own 300 scenes


def test_image_shortcut_adds_a_1x1_conv_of_the_cell_means_at_the_block_input(tmp_path, scenes, capsys):
    """v3's shortcut: the block's input is layer1.0's output plus ``W m + b``, ``m`` each 8 x 8 cell's mean
    (computed here by a loop over cells); the checkpoint keeps it through the analysis loader."""
    import numpy as np

    from nlanalysis.models import SceneNet
    from nlanalysis.train import variant_arch

    model = SceneNet(variant_arch("embedded_gaussian", 11, image_shortcut=True)).eval()
    randomize_(model)
    x = torch.randn(2, 3, 112, 112)
    seen = {}
    model.layer1[1].register_forward_pre_hook(lambda _m, args: seen.setdefault("block_in", args[0]))
    with torch.no_grad():
        model(x)
        before = model.layer1[0](model.stem(x))
    pixels = x.double().numpy()
    cells = np.zeros((2, 3, 14, 14))
    for i in range(14):
        for j in range(14):
            cells[:, :, i, j] = pixels[:, :, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8].mean(axis=(2, 3))
    w = model.shortcut.weight.detach().double().numpy()[:, :, 0, 0]
    expected = np.einsum("oc,bcij->boij", w, cells) + model.shortcut.bias.detach().double().numpy()[None, :, None, None]
    np.testing.assert_allclose((seen["block_in"] - before).double().numpy(), expected, atol=1e-5)

    train, val = scenes
    config = TrainConfig(epochs=1, batch_size=8, snapshots=(1.0,), image_shortcut=True)
    result = train_variant("embedded_gaussian", train, val, config, tmp_path, progress=False)
    ckpt = load_checkpoint(result.checkpoints[-1])
    assert ckpt.arch.image_shortcut and ckpt.meta["train_config"]["image_shortcut"] is True
    assert "image_shortcut" not in variant_arch("gc").to_dict()  # written as before the field: old result sets resume
    assert type(ckpt.arch).from_dict(ckpt.arch.to_dict()).image_shortcut
    trained = SceneNet(variant_arch("embedded_gaussian", train.num_classes, image_shortcut=True)).eval()
    trained.load_state_dict(torch.load(result.checkpoints[-1], weights_only=True)["state_dict"])
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(x[:1]), trained._layer1(x[:1]))
    assert main(["inspect", "--ckpt", str(result.checkpoints[-1])]) == 0
    assert "image shortcut at layer1.1" in capsys.readouterr().out


def test_a_record_written_before_a_config_field_existed_is_reused_and_other_values_refused(tmp_path, scenes, monkeypatch):
    """Run records kept from before ``image_shortcut`` existed match a job with its default; a job with the
    shortcut on is refused the same folder."""
    import json

    job = _one_finished_baseline(tmp_path, scenes, monkeypatch)
    record = tmp_path / "runs" / "baseline_s0.json"
    old = json.loads(record.read_text())
    del old["config"]["image_shortcut"]
    record.write_text(json.dumps(old))
    monkeypatch.setattr("nlanalysis.train.run.train_variant", lambda *a, **k: 1 / 0)
    run_training(job)  # reused, not retrained
    job.config = TrainConfig(**{**vars(job.config), "image_shortcut": True})
    with pytest.raises(ValueError, match="other settings"):
        run_training(job)
