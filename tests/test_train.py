"""Training: seeded, resumable into the checkpoint format, and it learns."""
import pytest
import torch

from nlanalysis.checkpoints import load_checkpoint
from nlanalysis.data import prepare_image
from nlanalysis.data.scenes import demo_scenes_path
from nlanalysis.train import TrainConfig, evaluate, load_scene_set, normalize, scene_preprocess, train_variant
from nlanalysis.train.run import TrainJob, run_training


@pytest.fixture(scope="module")
def scenes():
    ann, images = demo_scenes_path()
    data = load_scene_set(ann, images, limit=112)
    return data.subset(slice(0, 80)), data.subset(slice(80, 112))


def test_training_normalisation_is_the_extract_preprocessing(scenes):
    train, _ = scenes
    pre = scene_preprocess(train.images.shape[-1])
    prepared = prepare_image(train.images[0].permute(1, 2, 0).numpy(), pre)
    torch.testing.assert_close(normalize(train.images[:1], pre)[0], prepared.tensor)
    assert bool(prepared.valid.all())


def test_same_seed_same_weights_and_checkpoints_load(scenes, tmp_path):
    train, val = scenes
    cfg = TrainConfig(epochs=1, batch_size=16, seed=3, snapshots=(0.0, 1.0))
    a = train_variant("concatenation", train, val, cfg, tmp_path / "a", progress=False)
    b = train_variant("concatenation", train, val, cfg, tmp_path / "b", progress=False)
    sa, sb = torch.load(a.checkpoints[-1])["state_dict"], torch.load(b.checkpoints[-1])["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = train_variant("concatenation", train, val, TrainConfig(**{**vars(cfg), "seed": 4}), tmp_path / "c", progress=False)
    sc = torch.load(c.checkpoints[-1])["state_dict"]
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)

    ckpt = load_checkpoint(a.checkpoints[-1])
    assert ckpt.blocks == ["layer1.1"] and ckpt.meta["miou"] == pytest.approx(a.miou)
    assert ckpt.meta["variant"] == "concatenation" and ckpt.meta["final"] is True
    assert ckpt.preprocess.scale == (112, 112)
    assert [p.name for p in a.checkpoints] == ["concatenation_s3_step0.pth", "concatenation_s3.pth"]


def test_quick_job_learns_and_writes_its_tables(tmp_path, monkeypatch, scenes):
    train, _ = scenes
    monkeypatch.setattr("nlanalysis.train.run._train_set", lambda job: train)
    history = run_training(TrainJob.quick(tmp_path, val_scenes=32, progress=False))
    assert set(history.variant) == {"baseline", "embedded_gaussian"}
    for variant, rows in history.groupby("variant"):
        rows = rows.sort_values("step")
        assert rows.miou.iloc[-1] > rows.miou.iloc[0], f"{variant} did not learn: {rows.miou.tolist()}"
    summary = (tmp_path / "summary.csv").read_text()
    assert "margin" in summary and (tmp_path / "training.csv").is_file()
    final = load_checkpoint(tmp_path / "checkpoints" / "embedded_gaussian_s0.pth")
    full = load_checkpoint(final.path, truncate=False).model
    miou, _ = evaluate(full, load_scene_set(*demo_scenes_path(), limit=32))
    assert miou == pytest.approx(final.meta["miou"], abs=1e-9)


def test_shipping_halves_storage_and_loads(scenes, tmp_path):
    from nlanalysis.train.run import ship_checkpoints, shipped_checkpoints

    train, val = scenes
    result = train_variant("gc", train.subset(slice(0, 16)), val.subset(slice(0, 8)),
                           TrainConfig(epochs=1, batch_size=16, snapshots=(1.0,)), tmp_path / "ck", progress=False)
    (shipped,) = ship_checkpoints(tmp_path / "ck", tmp_path / "ship")
    assert shipped_checkpoints(tmp_path / "ship") == {"gc": shipped}
    assert shipped.stat().st_size < 0.6 * result.checkpoints[-1].stat().st_size
    full = load_checkpoint(result.checkpoints[-1]).model
    half = load_checkpoint(shipped).model
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(half(x), full(x), rtol=2e-2, atol=2e-2)
