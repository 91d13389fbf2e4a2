"""``extract --save-maps all``: every query's map, 8-bit with a per-row low and range, subsampled above
a size; read back against the maps the blocks compute themselves (forward hooks, no extract code)."""
import numpy as np
import pytest
import torch

import nlanalysis
from extract_inputs import one_thread
from nlanalysis.checkpoints import load_checkpoint
from nlanalysis.cli import main
from nlanalysis.data import load_image, prepare_image
from nlanalysis.data.scenes import demo_scenes_path
from nlanalysis.extract import maps as maps_module
from nlanalysis.extract.maps import ImageMaps, quantise_maps, save_image_maps
from nlanalysis.train.run import shipped_checkpoints

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
BLOCKS = ("layer1.1", "layer2.1")  # the two NL blocks of the shipped two-block model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    ann, images = demo_scenes_path()
    out = tmp_path_factory.mktemp("explore") / "run"
    args = ["extract", "--ckpt", str(shipped_checkpoints()["embedded_gaussian_x2"]), "--coco-ann", str(ann), "--coco-images",
            str(images), "--limit", "2", "--out", str(out), "--save-maps", "all", "--jsd-pairs", "0", "--quiet"]  # fmt: skip
    with one_thread():
        assert main(args) == 0
    return out, args


def _block_maps(ckpt, path):
    """``{block: (maps [N_q, N_k], (gh, gw), valid query cells [gh, gw])}`` from each block's own ``attention_maps``."""
    loaded = load_checkpoint(ckpt)
    prep = prepare_image(load_image(path), loaded.preprocess)
    modules, seen = dict(loaded.model.named_modules()), {}
    handles = [modules[b].register_forward_hook(lambda m, a, o, b=b: seen.update({b: a[0].clone()})) for b in BLOCKS]
    with torch.no_grad():
        loaded.model(prep.tensor[None])
        out = {b: (modules[b].attention_maps(seen[b])[0].numpy(), tuple(seen[b].shape[-2:])) for b in BLOCKS}
    for h in handles:
        h.remove()
    H, W = prep.tensor.shape[-2:]
    result = {}
    for b, (maps, (gh, gw)) in out.items():
        rows_ok = (np.arange(gh) + 0.5) * H / gh < prep.size[0]
        cols_ok = (np.arange(gw) + 0.5) * W / gw < prep.size[1]
        result[b] = (maps, (gh, gw), rows_ok[:, None] & cols_ok[None, :])
    return result


def test_every_query_is_saved_and_reads_back_within_quantisation(run):
    out, _ = run
    result = nlanalysis.load_run(out)
    assert result.info["settings"]["save_maps"] == "all" and len(result.maps) == 2
    ckpt = shipped_checkpoints()["embedded_gaussian_x2"]
    root = demo_scenes_path()[1]
    for image_id in result.maps:
        saved = result.maps[image_id]
        name = result.images.set_index(result.images["image_id"].astype(str)).loc[str(image_id), "file_name"]
        for block, (maps, (gh, gw), valid) in _block_maps(ckpt, root / name).items():
            assert saved.quantised(block) and saved["qmaps_" + str(BLOCKS.index(block))].dtype == np.uint8
            kept = saved.kept_queries(block)
            cells = saved[f"cells_{BLOCKS.index(block)}"][kept]
            # every valid cell of the query grid, once, in row-major order
            np.testing.assert_array_equal(cells, np.argwhere(valid))
            expected = maps[cells[:, 0] * gw + cells[:, 1]].reshape(-1, gh, gw)
            span = expected.max(axis=(1, 2)) - expected.min(axis=(1, 2))
            err = np.abs(saved.kept_maps(block) - expected).max(axis=(1, 2))
            assert np.all(err <= span / 510 + 1e-6)
            assert err.max() > 0  # really 8-bit: not the float maps
            # maps(): each query reads its cell's row
            every = saved.maps(block)
            np.testing.assert_array_equal(every[kept], saved.kept_maps(block))
            all_cells = saved[f"cells_{BLOCKS.index(block)}"]
            np.testing.assert_allclose(every, maps[all_cells[:, 0] * gw + all_cells[:, 1]].reshape(-1, gh, gw), atol=span.max() / 510 + 1e-6)


def test_rerun_resumes_and_keeps_the_maps(run, capsys):
    out, args = run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "maps").iterdir()}
    with one_thread():
        assert main([a for a in args if a != "--quiet"]) == 0
    assert "0 done, 0 failed, 2 skipped" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "maps").iterdir()} == before


def test_save_maps_all_refuses_queries(run, capsys):
    _, args = run
    assert main([*args, "--queries", "grid:3"]) == 2
    assert "--save-maps all keeps the map of every query" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["some" if a == "all" else a for a in args])


def _write(tmp_path, maps, cells, name="m.npz"):
    path = tmp_path / name
    with open(path, "wb") as f:
        save_image_maps(f, image_id=1, blocks=["b"], maps=[maps], cells=[cells], query_shapes=[(10, 12)], key_shapes=[maps.shape[-2:]],
                        query_yx=(cells + 0.5) * 8, query_label=np.full(len(cells), -1), scale=(1.0, 1.0), size=(80, 96),
                        original_size=(80, 96), input_size=(80, 96))  # fmt: skip
    return ImageMaps(path)


def test_subsampled_above_the_size_limit(tmp_path, monkeypatch):
    """Above MAX_MAP_BYTES every s-th row and column of cells (counted from the first) is kept; the
    rest read as NaN; signed maps keep their sign (per-row low and range)."""
    rng = np.random.default_rng(0)
    cells = np.argwhere(np.ones((10, 12), bool))[::-1].copy()  # 120 queries, in reverse order
    maps = rng.normal(size=(120, 5, 6)).astype(np.float32)  # signed, like dot-product maps
    monkeypatch.setattr(maps_module, "MAX_MAP_BYTES", 30 * 30)  # 30 rows of 30 bytes
    saved = _write(tmp_path, maps, cells)
    assert int(saved["qstride_0"]) == 2  # 120 rows > 30; every 2nd: 5 x 6 = 30
    kept = saved.kept_queries("b")
    np.testing.assert_array_equal(cells[kept], np.argwhere(np.ones((10, 12), bool)).reshape(10, 12, 2)[::2, ::2].reshape(-1, 2))
    span = maps[kept].max(axis=(1, 2)) - maps[kept].min(axis=(1, 2))
    assert np.all(np.abs(saved.kept_maps("b") - maps[kept]).max(axis=(1, 2)) <= span / 510 + 1e-6)
    every = saved.maps("b")
    dropped = np.setdiff1d(np.arange(120), kept)
    assert np.isnan(every[dropped]).all() and not np.isnan(every[kept]).any()


def test_few_queries_stay_float16(tmp_path):
    cells = np.argwhere(np.ones((4, 4), bool))
    maps = np.random.default_rng(1).random((16, 5, 6)).astype(np.float32)
    saved = _write(tmp_path, maps, cells)
    assert not saved.quantised("b") and saved["maps_0"].dtype == np.float16
    np.testing.assert_array_equal(saved.kept_queries("b"), np.arange(16))
    np.testing.assert_allclose(saved.kept_maps("b"), maps, atol=1e-3)


@pytest.mark.parametrize(("grid", "maps_per_query", "stride", "kept"), [((50, 84), 1, 3, 17 * 28), ((16, 16), 7, 1, 256)])
def test_documented_sizes(grid, maps_per_query, stride, kept):
    """The README's bytes per image: COCO res4 (N = 50 x 84 = 4,200) keeps every 3rd row and column of
    queries (~2 MB per block); a ViT-S/14 layer at 224 (16 x 16 patches, 6 heads + mean) keeps all."""
    n = grid[0] * grid[1]
    maps = np.zeros((n, maps_per_query, *grid), dtype=np.float32) if maps_per_query > 1 else np.zeros((n, *grid), dtype=np.float32)
    q = quantise_maps(maps, np.argwhere(np.ones(grid, bool)))
    assert int(q["qstride"]) == stride and len(q["qrows"]) == kept
    assert q["qmaps"].nbytes == kept * maps_per_query * n <= maps_module.MAX_MAP_BYTES
