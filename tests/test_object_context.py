"""Object-specific context (nlanalysis.metrics.object_context, extract.object_sites) against naive float64 loops."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from nlanalysis.metrics.object_context import OBJECT_CONTEXT, object_context
from nlanalysis.metrics.query_dependence import row_chunks
from nlanalysis.tables import summarise


def naive_context(maps: np.ndarray, ql: np.ndarray, kl: np.ndarray, cats: np.ndarray | None) -> dict[str, float]:
    """One map ``[N, K]``, query labels ``[N]`` (-1: not counted), key labels ``[K]`` (-1: left out), label categories."""
    clean = np.flatnonzero(kl >= 0)
    rows, labels = [], []
    for i in range(len(ql)):
        if ql[i] < 0:
            continue
        p = maps[i, clean].astype(np.float64)
        if p.sum() <= 0:
            continue
        rows.append(p / p.sum())
        labels.append(ql[i])
    mean_map = np.mean(rows, axis=0)
    k = len(clean)
    klab = kl[clean]

    def sets(a: int) -> dict[str, np.ndarray]:
        on = [j for j in range(k) if klab[j] > 0 and klab[j] != a]
        out = {"own_object": [j for j in range(k) if klab[j] == a], "other_object": on,
               "background": [j for j in range(k) if klab[j] == 0]}  # fmt: skip
        if cats is not None:
            out["same_category"] = [j for j in on if cats[klab[j]] == cats[a] and cats[a] >= 0]
            out["other_category"] = [j for j in on if cats[klab[j]] != cats[a] and cats[klab[j]] >= 0 and cats[a] >= 0]
        return out

    object_map = np.mean([p for p, a in zip(rows, labels) if a > 0], axis=0)  # the mean map of object queries only
    real: dict[str, list[float]] = {}
    null: dict[str, list[float]] = {}
    for p, a in zip(rows, labels):
        if a == 0:
            continue
        for name, s in sets(a).items():
            if s:
                area = len(s) / k
                real.setdefault(name, []).append(sum(p[j] for j in s) / area)
                null.setdefault(name, []).append(sum(mean_map[j] for j in s) / area)
                if name == "own_object":
                    null.setdefault("objects", []).append(sum(object_map[j] for j in s) / area)
    out = {n: math.nan for n in OBJECT_CONTEXT}
    for name in real:
        out[f"{name}_density"] = float(np.mean(real[name]))
        if f"{name}_null" in out:
            out[f"{name}_null"] = float(np.mean(null[name]))
    out["own_object_lift"] = out["own_object_density"] / out["own_object_null"]
    out["own_object_lift_objects"] = out["own_object_density"] / float(np.mean(null["objects"]))
    if "same_category" in null:
        out["same_category_null"] = float(np.mean(null["same_category"]))
        out["same_category_lift"] = out["same_category_density"] / out["same_category_null"]
    return out


def _random_case(seed: int, b: int = 2, heads: int = 3, n: int = 20, k: int = 16, n_labels: int = 5):
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(b, heads, n, k, generator=g, dtype=torch.float64) ** 4
    maps[:, :, 3] = 0.0  # an all-zero row: not counted
    ql = torch.randint(0, n_labels, (b, n), generator=g)
    ql[:, :2] = -1  # padding queries
    kl = torch.randint(0, n_labels, (b, k), generator=g)
    kl[:, -2:] = -1  # padding / mixed keys
    cats = torch.tensor([[-1, 7, 7, 3, 9], [-1, 3, 3, 3, 8]])[:b]
    return maps, ql, kl, cats


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_statistics_match_naive_float64_loops(chunk):
    maps, ql, kl, cats = _random_case(0)
    got = object_context(row_chunks(maps, chunk), ql, kl, cats, n_labels=5)
    for b in range(maps.shape[0]):
        for h in range(maps.shape[1]):
            want = naive_context(maps[b, h].numpy(), ql[b].numpy(), kl[b].numpy(), cats[b].numpy())
            for name in OBJECT_CONTEXT:
                assert got[name].shape == maps.shape[:2]
                np.testing.assert_allclose(got[name][b, h].item(), want[name], rtol=1e-10, err_msg=name, equal_nan=True)


def test_without_categories_the_category_columns_are_nan_and_float32_rows_agree():
    maps, ql, kl, _ = _random_case(1, b=1, heads=1)
    got = object_context(row_chunks(maps[:, 0].float(), 5), ql, kl)
    want = naive_context(maps[0, 0].numpy(), ql[0].numpy(), kl[0].numpy(), None)
    for name in ("same_category_density", "other_category_density", "same_category_null", "same_category_lift"):
        assert math.isnan(got[name].item())
    for name in ("own_object_density", "own_object_null", "own_object_lift", "background_density", "other_object_null"):
        np.testing.assert_allclose(got[name].item(), want[name], rtol=1e-5, err_msg=name)


def _objects_image(side: int = 8):
    """An ``side x side`` grid: background 0, object 1 on the top-left block, 2 on the bottom right, 3 a small one."""
    lab = np.zeros((side, side), dtype=np.int64)
    lab[:3, :3] = 1
    lab[4:, 4:] = 2
    lab[0, 6] = 3
    return torch.from_numpy(lab.ravel())


def test_a_map_attending_its_own_object_has_a_large_lift():
    lab = _objects_image()
    n = len(lab)
    same = (lab[:, None] == lab[None, :]) & (lab[:, None] > 0)
    maps = torch.where(same, 1.0, 0.01).double()  # each object query: its own object; background: all alike
    maps /= maps.sum(-1, keepdim=True)
    got = object_context(row_chunks(maps[None], 10), lab[None], lab[None], torch.tensor([[-1, 5, 5, 6]]))
    want = naive_context(maps.numpy(), lab.numpy(), lab.numpy(), np.array([-1, 5, 5, 6]))
    assert got["own_object_lift"].item() > 3.0 and got["own_object_density"].item() > 5.0
    assert got["other_object_density"].item() < 0.2 and got["other_object_null"].item() > 0.5
    for name in OBJECT_CONTEXT:
        np.testing.assert_allclose(got[name].item(), want[name], rtol=1e-10, err_msg=name)
    assert n == 64


def test_a_map_attending_its_own_group_has_a_same_category_lift_and_a_shared_map_has_one():
    """Objects 1 and 2 share category 5 (a group of the query-specific design), object 3 is category 6."""
    lab, cats = _objects_image(), torch.tensor([[-1, 5, 5, 6]])
    cat_of = cats[0][lab]  # each position's category (-1 on background)
    group = (cat_of[:, None] == cat_of[None, :]) & (lab[:, None] > 0)
    maps = torch.where(group, 1.0, 0.02).double()
    maps /= maps.sum(-1, keepdim=True)
    got = object_context(row_chunks(maps[None], 10), lab[None], lab[None], cats)
    want = naive_context(maps.numpy(), lab.numpy(), lab.numpy(), cats[0].numpy())
    assert got["same_category_lift"].item() > 1.5  # the mean-map null keeps most group mass: 25 of 26 object cells share it
    for name in ("same_category_density", "same_category_null", "same_category_lift"):
        np.testing.assert_allclose(got[name].item(), want[name], rtol=1e-10, err_msg=name)
    shared = maps.mean(0, keepdim=True).expand_as(maps)  # every query gets one map: no preference
    flat = object_context(row_chunks(shared[None], 10), lab[None], lab[None], cats)
    assert flat["same_category_lift"].item() == pytest.approx(1.0, abs=1e-12)


def test_a_local_map_reads_a_lift_below_one_and_a_same_over_other_density_near_one():
    """Maps by spatial distance alone over 2 x 2 objects in 9 slots of a 12 x 12 grid, each object's category drawn
    at random (no category prefers any place): a local row's density on the other objects, which lie farther off,
    is below the near-uniform mean map's, so the lift reads below 1 over the images (the bias the module docstring
    states); same/other-category density compares each row with itself and reads ~1."""
    side, g = 12, torch.Generator().manual_seed(3)
    ys, xs = torch.meshgrid(torch.arange(float(side)), torch.arange(float(side)), indexing="ij")
    c = torch.stack([ys.flatten(), xs.flatten()], -1).double()
    maps = torch.softmax(-torch.cdist(c, c) ** 2 / (2 * 2.0**2), -1)
    labs, cats = [], []
    for _ in range(400):
        lab = torch.zeros(side, side, dtype=torch.long)
        for k, slot in enumerate(torch.randperm(9, generator=g)[:6].tolist()):
            by, bx = 4 * (slot // 3) + 1, 4 * (slot % 3) + 1
            lab[by : by + 2, bx : bx + 2] = k + 1
        labs.append(lab.flatten())
        cats.append(torch.cat([torch.tensor([-1]), 5 + torch.randint(0, 2, (6,), generator=g)]))
    labs, cats = torch.stack(labs), torch.stack(cats)
    got = object_context(row_chunks(maps[None].expand(len(labs), -1, -1), 16), labs, labs, cats)
    for b in (0, 1):
        want = naive_context(maps.numpy(), labs[b].numpy(), labs[b].numpy(), cats[b].numpy())
        for name in ("same_category_lift", "same_category_density", "other_category_density"):
            np.testing.assert_allclose(got[name][b].item(), want[name], rtol=1e-10, err_msg=name, equal_nan=True)
    lift, ratio = got["same_category_lift"], got["same_category_density"] / got["other_category_density"]
    ok = lift.isfinite() & ratio.isfinite()
    assert ok.sum() > 300
    assert lift[ok].log().mean().exp() < 0.95  # geometric means over the images
    assert abs(ratio[ok].log().mean().exp() - 1) < 0.1  # log-ratio sd ~0.8 over images: se ~0.04
    cat_of = cats[0][labs[0]]  # and a map attending its own category: a large ratio
    own = torch.where((cat_of[:, None] == cat_of[None, :]) & (labs[0][:, None] > 0), 1.0, 0.02).double()
    found = object_context(row_chunks((own / own.sum(-1, keepdim=True))[None], 16), labs[:1], labs[:1], cats[:1])
    assert (found["same_category_density"] / found["other_category_density"]).item() > 5


def test_a_query_independent_map_has_lift_exactly_one():
    lab = _objects_image()
    g = torch.Generator().manual_seed(3)
    one = torch.rand(len(lab), generator=g, dtype=torch.float64) ** 3  # a salience map, the same for every query
    maps = one.expand(len(lab), -1)[None]
    got = object_context(row_chunks(maps, 9), lab[None], lab[None])
    assert got["own_object_lift"].item() == pytest.approx(1.0, abs=1e-12)
    assert got["own_object_lift_objects"].item() == pytest.approx(1.0, abs=1e-12)
    for name in ("own_object", "other_object", "background"):
        assert got[f"{name}_density"].item() == pytest.approx(got[f"{name}_null"].item(), rel=1e-12)


def test_sharper_object_queries_on_one_salience_map_lift_only_against_the_all_query_null():
    """One shared map, object queries at a higher temperature than background ones: a gain, not object context."""
    lab = _objects_image()
    salience = torch.where(lab > 0, 3.0, 1.0).double() + torch.linspace(0, 1, len(lab), dtype=torch.float64)
    gain = torch.where(lab > 0, 3.0, 0.5).double()  # per-query sharpness
    maps = torch.softmax(gain[:, None] * salience.log()[None, :], dim=-1)[None]
    got = object_context(row_chunks(maps, 16), lab[None], lab[None])
    assert got["own_object_lift"].item() > 1.2
    assert got["own_object_lift_objects"].item() == pytest.approx(1.0, abs=1e-12)
    want = naive_context(maps[0].numpy(), lab.numpy(), lab.numpy(), None)
    np.testing.assert_allclose(got["own_object_lift"].item(), want["own_object_lift"], rtol=1e-10)


def test_bad_labels_are_refused_with_their_shapes():
    maps, ql, kl, cats = _random_case(2)
    with pytest.raises(ValueError, match=r"key_labels must be \[B, N_key\]"):
        object_context(row_chunks(maps), ql, kl[:, :5])
    with pytest.raises(ValueError, match=r"query_labels must be \[B, N_query\]"):
        object_context(row_chunks(maps), ql[:1], kl)
    with pytest.raises(ValueError, match=r"categories must be \[B, L\]"):
        object_context(row_chunks(maps), ql, kl, cats[:, :3], n_labels=5)


def test_the_lift_interval_is_the_geometric_mean_with_a_log_interval():
    lift = np.array([0.8, 1.25, 2.0, 1.6, 1.1])
    frame = pd.DataFrame({"block": "b", "variant": "v", "image_id": range(5), "own_object_lift": lift, "att": 0.1})
    row = summarise(frame, stats=["att", "own_object_lift"]).iloc[0]
    logs = np.log(lift)
    from scipy import stats

    half = stats.t.ppf(0.975, len(lift) - 1) * logs.std(ddof=1) / math.sqrt(len(lift))
    assert row["own_object_lift"] == pytest.approx(math.exp(logs.mean()))
    assert row["own_object_lift_low"] == pytest.approx(math.exp(logs.mean() - half))
    assert row["own_object_lift_high"] == pytest.approx(math.exp(logs.mean() + half))


# -- the sites of a capture: NL blocks and ViT heads, as extract measures them ----------------------


def _labels_and_valid(b: int, h: int, w: int):
    """Hand-made object labels ``[B, H, W]`` (objects 1..3, two of one category; -1 a crowd region, neither object nor
    background: left out like a pooled key of mixed labels) and a valid mask (image 1 padded)."""
    lab = torch.zeros(b, h, w, dtype=torch.int64)
    lab[:, 3 * h // 8 : 5 * h // 8, : w // 4] = -1  # a crowd region (the object drawn over its top)
    lab[:, : 3 * h // 8, : w // 3] = 1  # edges off the 2x2 pooling: pooled keys that mix labels
    lab[:, h // 2 :, w // 3 : 2 * w // 3] = 2
    lab[:, : h // 4, 5 * w // 8 :] = 3
    valid = torch.ones(b, h, w, dtype=torch.bool)
    valid[1, :, 3 * w // 4 :] = False
    return lab, valid


def _cell_labels(pixels: torch.Tensor, grid) -> np.ndarray:
    """The value at each cell's centre pixel, by loops: ``[B, gh * gw]``."""
    b, h, w = pixels.shape
    out = np.zeros((b, grid[0] * grid[1]), dtype=np.int64)
    for i in range(b):
        for r in range(grid[0]):
            for c in range(grid[1]):
                out[i, r * grid[1] + c] = int(pixels[i, min(int((r + 0.5) * h / grid[0]), h - 1), min(int((c + 0.5) * w / grid[1]), w - 1)])
    return out


def _run_site(analysis, images, valid, labels, categories, locality: bool = False):
    analysis.set_query_dependence("cheap")  # the object context comes with the query-dependence suite
    analysis.set_locality_control(locality)
    with analysis.capture(queries=None, seed=0, jsd_pairs=16, chunk_size=None, controls=False) as cap:
        cap.set_valid(valid)
        cap.set_objects(labels)
        cap.object_categories = categories
        analysis.model(images)
    return analysis.frame(cap.records, images.shape[0], valid)


def _naive_site(maps: np.ndarray, labels, valid, grid, categories, b: int) -> dict[str, float]:
    cells, ok = _cell_labels(labels, grid)[b], _cell_labels(valid.long(), grid)[b] > 0
    lab = np.where(ok, cells, -1)
    cats = np.array([-1, *categories[b]])
    return naive_context(maps, lab, lab, cats)


def _pooled_labels(cells: np.ndarray, grid) -> np.ndarray:
    """Labels ``[gh * gw]`` of the keys of a 2x2 max-pool (floor): a key's four cells' label where they agree, else -1."""
    gh, gw = grid
    cell = cells.reshape(gh, gw)
    out = np.full((gh // 2, gw // 2), -1, dtype=np.int64)
    for r in range(gh // 2):
        for c in range(gw // 2):
            four = cell[2 * r : 2 * r + 2, 2 * c : 2 * c + 2]
            out[r, c] = four[0, 0] if (four == four[0, 0]).all() else -1
    return out.ravel()


POOLED_ARCH = dict(
    blocks=[("layer1.0.nonlocal_block", 256, {"mode": "dot_product"}),
            ("layer2.0.nonlocal_block", 512, {"mode": "gaussian", "sub_sample": True})],
)  # fmt: skip


@pytest.mark.parametrize("arch", ["tiny", "pooled"])
def test_nl_block_columns_match_naive_maps(tmp_path, arch):
    """Embedded Gaussian on the query grid (and a GC block: lift 1); Gaussian with 2x2-pooled keys (mixed keys left
    out) and a signed dot-product block (NaN)."""
    from extract_inputs import TINY_ARCH, tiny_checkpoint

    from nlanalysis.adapters import list_blocks
    from nlanalysis.extract import load_analysis
    from nlanalysis.models import BlockSpec, ResNetArch

    specs = [BlockSpec(f"{n}", "NonLocal2d", c, "after_conv3", kw) for n, c, kw in POOLED_ARCH["blocks"]]
    model_arch = TINY_ARCH if arch == "tiny" else ResNetArch((1, 1), specs, prefix="backbone.")
    analysis = load_analysis(tiny_checkpoint(tmp_path / "tiny.pth", arch=model_arch))
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    labels, valid = _labels_and_valid(2, 64, 96)
    categories = [[5, 5, 7], [2, 3, 3]]
    frame = _run_site(analysis, images, valid, labels, categories)
    name = "backbone.layer2.0.nonlocal_block"
    block = dict(analysis.model.named_modules())[name]
    seen = {}
    handle = block.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        analysis.model(images)
    handle.remove()
    adapter = next(b.adapter for b in list_blocks(analysis.model) if b.name == name)
    att = adapter.attention(block, seen["x"])
    assert (tuple(att.key_shape) == tuple(att.query_shape)) == (arch == "tiny")
    full = att.rows(0, att.n_query).detach().double().numpy()
    grid = att.query_shape
    for b in range(2):
        row = frame[(frame["image"] == b) & (frame["block"] == name)].iloc[0]
        ok = _cell_labels(valid.long(), grid)[b] > 0
        ql = np.where(ok, _cell_labels(labels, grid)[b], -1)
        kl = ql if arch == "tiny" else np.where(_pooled_labels(np.where(ok, 0, -1), grid) == 0, _pooled_labels(ql, grid), -1)
        want = naive_context(full[b], ql, kl, np.array([-1, *categories[b]]))
        for stat in OBJECT_CONTEXT:
            np.testing.assert_allclose(row[stat], want[stat], rtol=2e-5, err_msg=stat, equal_nan=True)
    other = frame[frame["block"] != name]
    if arch == "tiny":  # a GC block: one map for every query, lift 1
        np.testing.assert_allclose(other["own_object_lift"], 1.0, atol=1e-6)
    else:  # dot product: signed maps
        assert other[list(OBJECT_CONTEXT)].isna().all().all()


def test_vit_head_columns_match_naive_maps():
    timm_vit = pytest.importorskip("timm.models.vision_transformer", reason="timm (the ViT extra) is not installed")
    from helpers import randomize_

    from nlanalysis.capture.heads import ViTCapture
    from nlanalysis.extract import ViTAnalysis

    model = randomize_(timm_vit.VisionTransformer(img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=4, num_classes=0,
                                                  qkv_bias=True, init_values=0.5), std=0.2).eval()  # fmt: skip
    analysis = ViTAnalysis(model, size=28, kernels="eager")
    images = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    labels, valid = _labels_and_valid(2, 28, 28)
    categories = [[1, 1, 4], [2, 3, 3]]
    frame = _run_site(analysis, images, valid, labels, categories)
    with ViTCapture(model, keep_attention=True, stats=False) as cap:
        model(images)
    for rec in cap.records:
        rows = rec.attention.rows(0, rec.attention.n_query).double()  # [B, heads, N, N]
        maps = torch.cat([rows, rows.mean(1, keepdim=True)], 1).numpy()
        for b in range(2):
            for m in range(maps.shape[1]):
                head = -1 if m == maps.shape[1] - 1 else m
                row = frame[(frame["image"] == b) & (frame["layer"] == rec.layer) & (frame["head"] == head)].iloc[0]
                want = _naive_site(maps[b, m], labels, valid, rec.layout.grid, categories, b)
                for name in OBJECT_CONTEXT:
                    np.testing.assert_allclose(row[name], want[name], rtol=2e-5, err_msg=f"{name} layer {rec.layer} head {head}",
                                               equal_nan=True)  # fmt: skip


def test_without_objects_the_columns_are_nan(tmp_path):
    from extract_inputs import tiny_checkpoint

    from nlanalysis.extract import load_analysis

    analysis = load_analysis(tiny_checkpoint(tmp_path / "tiny.pth"))
    images = torch.randn(1, 3, 64, 64)
    with analysis.capture(queries=None, seed=0, jsd_pairs=16, chunk_size=None, controls=False) as cap:
        analysis.model(images)
    assert not set(OBJECT_CONTEXT) & set(analysis.frame(cap.records, 1)) and cap.records[0].x is None  # suite off: not measured
    analysis.set_query_dependence("cheap")
    assert analysis.columns[-len(OBJECT_CONTEXT) :] == list(OBJECT_CONTEXT)
    with analysis.capture(queries=None, seed=0, jsd_pairs=16, chunk_size=None, controls=False) as cap:
        analysis.model(images)
    frame = analysis.frame(cap.records, 1)
    assert frame[list(OBJECT_CONTEXT)].isna().all().all() and len(frame) == 2 and cap.records[0].x is None


def _naive_local(qgrid, qcell, kgrid, kcell, kvalid: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Maps by distance alone, row q = exp(-d^2 / 2 sigma^2) over the valid keys / its sum (loops), and the distances."""
    qp = np.array([((r + 0.5) * qcell[0], (c + 0.5) * qcell[1]) for r in range(qgrid[0]) for c in range(qgrid[1])])
    kp = np.array([((r + 0.5) * kcell[0], (c + 0.5) * kcell[1]) for r in range(kgrid[0]) for c in range(kgrid[1])])
    d = np.sqrt(((qp[:, None] - kp[None]) ** 2).sum(-1))
    maps = np.where(kvalid[None], np.exp(-(d**2) / (2 * sigma**2)), 0.0)
    return maps / maps.sum(1, keepdims=True), d


@pytest.mark.parametrize("site", ["nl", "vit"])
def test_locality_control_columns_are_those_of_naive_distance_maps(tmp_path, site):
    """``--locality-control``: each map's sigma gives naive distance-only maps (valid keys; NL: 2x2-pooled keys, image 1
    padded) whose mean distance over valid queries is the map's own att_distance_px and whose lifts are the
    ctrl_local_* columns; signed maps (dot product) get NaN."""
    from nlanalysis.extract import load_analysis
    from nlanalysis.metrics.locality_control import LOCALITY_COLUMNS, LOCALITY_LIFTS
    from nlanalysis.models import BlockSpec, ResNetArch

    if site == "nl":
        from extract_inputs import tiny_checkpoint

        specs = [BlockSpec(f"{n}", "NonLocal2d", c, "after_conv3", kw) for n, c, kw in POOLED_ARCH["blocks"]]
        analysis = load_analysis(tiny_checkpoint(tmp_path / "tiny.pth", arch=ResNetArch((1, 1), specs, prefix="backbone.")))
        images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
        labels, valid = _labels_and_valid(2, 64, 96)
        grid, cell, kgrid, kcell, pooled = (8, 12), (8.0, 8.0), (4, 6), (16.0, 16.0), True
        rows = lambda f: f[f["block"] == "backbone.layer2.0.nonlocal_block"]  # noqa: E731
    else:
        timm_vit = pytest.importorskip("timm.models.vision_transformer", reason="timm (the ViT extra) is not installed")
        from helpers import randomize_

        from nlanalysis.extract import ViTAnalysis

        model = randomize_(timm_vit.VisionTransformer(img_size=28, patch_size=7, embed_dim=32, depth=1, num_heads=2, num_classes=0,
                                                      qkv_bias=True), std=0.6).eval()  # fmt: skip
        analysis = ViTAnalysis(model, size=28, kernels="eager")
        images = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
        labels, valid = _labels_and_valid(2, 28, 28)
        grid, cell, kgrid, kcell, pooled = (4, 4), (7.0, 7.0), (4, 4), (7.0, 7.0), False
        rows = lambda f: f  # noqa: E731
    categories = [[5, 5, 7], [2, 3, 3]]
    frame = _run_site(analysis, images, valid, labels, categories, locality=True)
    assert analysis.columns[-len(LOCALITY_COLUMNS) :] == list(LOCALITY_COLUMNS)
    checked = spread = 0
    for _, row in rows(frame).iterrows():
        b = int(row["image"])
        ok = _cell_labels(valid.long(), grid)[b] > 0
        ql = np.where(ok, _cell_labels(labels, grid)[b], -1)
        kvalid = _pooled_labels(np.where(ok, 0, -1), grid) == 0 if pooled else ok
        kl = np.where(kvalid, _pooled_labels(ql, grid), -1) if pooled else ql
        sigma = row["ctrl_local_sigma_px"]
        maps, d = _naive_local(grid, cell, kgrid, kcell, kvalid, sigma if np.isfinite(sigma) else 1e12)
        if np.isfinite(sigma):
            assert (maps * d).sum(1)[ok].mean() == pytest.approx(row["att_distance_px"], rel=1e-6)
        else:  # only a map as spread as the uniform one (to ~1e-5) gets its limit, the uniform map
            assert sigma == np.inf and (maps * d).sum(1)[ok].mean() <= row["att_distance_px"] * (1 + 1e-4), row.to_dict()
            spread += 1
        want = naive_context(maps, ql, kl, np.array([-1, *categories[b]]))
        for name in LOCALITY_LIFTS:
            np.testing.assert_allclose(row[f"ctrl_local_{name}"], want[name], rtol=1e-6, err_msg=name, equal_nan=True)
        checked += 1
    assert checked == (2 if site == "nl" else 6) and (site == "nl" or 0 < spread < checked)  # ViT: both kinds of map
    if site == "nl":  # the signed dot-product block
        assert frame[frame["block"] != "backbone.layer2.0.nonlocal_block"][list(LOCALITY_COLUMNS)].isna().all().all()


def test_locality_control_needs_the_suite(tmp_path):
    from extract_inputs import tiny_checkpoint

    from nlanalysis.extract import MeasureSpec, load_analysis

    analysis = load_analysis(tiny_checkpoint(tmp_path / "tiny.pth"))
    with pytest.raises(ValueError, match="--locality-control reads the query-dependence suite"):
        analysis.set_locality_control(True)
    analysis.set_query_dependence("cheap")
    analysis.set_locality_control(True)
    analysis.set_query_dependence("off")  # an Analysis reused for a run without the suite: the control goes with it
    assert not analysis.locality_control and analysis.columns == type(analysis).columns
    with pytest.raises(ValueError, match="--locality-control reads the query-dependence suite"):
        MeasureSpec(query_dependence="off", locality_control=True)
