"""The query-dependence suite as columns of the one pipeline: ``analyze(query_dependence=...)`` on shipped NL/GC
checkpoints and a random-init timm ViT, checked against numpy float64 on the full maps from the adapters (SVD for
the rank-1 share, direct formulas for the rest); ``"off"`` leaves every column as it was; ``extract`` writes and
resumes the columns."""
import numpy as np
import pandas as pd
import pytest
import torch

from naive import mean_cos_dist_all_pairs
from nlanalysis import analyze, schema
from nlanalysis.adapters import list_blocks
from nlanalysis.capture import Capture
from nlanalysis.checkpoints import load_checkpoint
from nlanalysis.cli import main
from nlanalysis.data.scenes import demo_scenes_path
from nlanalysis.extract import load_run
from nlanalysis.measure.query_dep import COLUMNS, EXPENSIVE
from nlanalysis.train.data import load_scene_set, normalize
from nlanalysis.train.run import shipped_checkpoints

SCENES = 3


@pytest.fixture(scope="module")
def scenes():
    ann, images = demo_scenes_path()
    return load_scene_set(ann, images, limit=SCENES).images


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _centred(logits):
    return logits - logits.mean(axis=1, keepdims=True)


def _rank1(logits):
    """``logit_rank1``, ``att_gain_only``, ``gain_only_tv`` by SVD (the last two: softmax maps only)."""
    u, s, vt = np.linalg.svd(_centred(logits), full_matrices=False)
    rebuilt = _softmax(np.outer(u[:, 0] * s[0], vt[0]))
    real = _softmax(logits)
    return s[0] ** 2 / (s**2).sum(), mean_cos_dist_all_pairs(rebuilt), 0.5 * np.abs(real - rebuilt).sum(axis=1).mean()


def _dnl(q, k, scale, softmax):
    """``unary_var_share`` and ``att_pairwise_only``: the terms built as N x K matrices."""
    qc, kc = q - q.mean(0), k - k.mean(0)
    pair = scale * qc @ kc.T
    unary = scale * k @ q.mean(0)
    share = unary.var() / (unary.var() + pair.var(axis=1).mean())
    return share, mean_cos_dist_all_pairs(_softmax(pair) if softmax else pair)


def _nmi(a, eps=1e-8):
    a = a / a.sum(axis=1, keepdims=True) + eps
    a = a / a.sum(axis=1, keepdims=True)
    p_k = a.mean(0)
    mutual = np.mean(np.sum(a * np.log(a / p_k), axis=1))
    return mutual / np.sqrt(np.log(len(a)) * -np.sum(p_k * np.log(p_k)))


def _signed(a):
    """``att_abs`` and ``att_norm_weighted``: every ordered pair i != j."""
    gram, norms = a @ a.T, np.linalg.norm(a, axis=1)
    off = ~np.eye(len(a), dtype=bool)
    return mean_cos_dist_all_pairs(np.abs(a)), 1 - gram[off].sum() / np.outer(norms, norms)[off].sum()


def _where(grid, cell):
    yy, xx = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    return np.stack([(yy.ravel() + 0.5) * cell[0], (xx.ravel() + 0.5) * cell[1]], 1)


def _spatial(a, grid, stride, query_cells, key_cells):
    """``att_distance_px``, ``att_local``, ``att_local_uniform`` of rows ``a`` (renormalised here) of queries
    at ``query_cells`` over keys at ``key_cells`` (flat indices) of one grid."""
    a = a / a.sum(axis=1, keepdims=True)
    qp, kp = _where(grid, stride)[query_cells], _where(grid, stride)[key_cells]
    dy, dx = qp[:, None, 0] - kp[None, :, 0], qp[:, None, 1] - kp[None, :, 1]
    near = (np.abs(dy) <= 1.5 * stride[0]) & (np.abs(dx) <= 1.5 * stride[1])
    return (a * np.hypot(dy, dx)).sum(1).mean(), (a * near).sum(1).mean(), near.mean()


def _check(row, expected, rtol=1e-5, atol=1e-6):
    for name, value in expected.items():
        assert row[name] == pytest.approx(value, rel=rtol, abs=atol), name


def _nl_expected(att, b, stride, cells):
    """The columns of image ``b``'s map of an NL/GC block (``att`` from its adapter; keys on the query grid),
    in float64, over its valid ``cells`` (queries and keys)."""
    assert att.key_shape == att.query_shape
    a = att.full()[b].double().numpy()[np.ix_(cells, cells)]
    nonzero = np.abs(a).max(axis=1) > 0
    a = a[nonzero]  # all-zero rows (concatenation) do not count
    out = {name: np.nan for name in COLUMNS}
    mode = getattr(att, "mode", "shared")
    if mode in ("embedded_gaussian", "gaussian"):
        q, k = att.query[b].double().numpy()[cells], att.key[b].double().numpy().T[cells]
        out["logit_rank1"], out["att_gain_only"], out["gain_only_tv"] = _rank1(att.scale * q @ k.T)
        out["unary_var_share"], out["att_pairwise_only"] = _dnl(q, k, att.scale, True)
    elif mode == "dot_product":
        q, k = att.query[b].double().numpy()[cells], att.key[b].double().numpy().T[cells]
        out["logit_rank1"] = _rank1(a)[0]
        out["unary_var_share"], out["att_pairwise_only"] = _dnl(q, k, 1.0, False)
        out["att_abs"], out["att_norm_weighted"] = _signed(a)
    elif mode == "concatenation":
        out["logit_rank1"] = _rank1(a)[0]
    else:  # one shared softmax map: rank 1 trivially, the gain-only maps are the map itself
        out["logit_rank1"], out["att_gain_only"], out["gain_only_tv"] = 1.0, 0.0, 0.0
    if mode != "dot_product":
        out["qk_nmi"] = _nmi(a)
        kept = np.flatnonzero(cells)
        out["att_distance_px"], out["att_local"], out["att_local_uniform"] = _spatial(a, att.query_shape, stride, kept[nonzero], kept)
    return out


@pytest.mark.parametrize("variant, padded", [("embedded_gaussian", False), ("embedded_gaussian", True), ("dot_product", False),
                                             ("concatenation", True), ("gc", True)])  # fmt: skip
def test_nl_blocks_against_the_full_maps(variant, padded, scenes):
    ckpt = load_checkpoint(shipped_checkpoints()[variant])
    model, x = ckpt.model.eval(), normalize(scenes, ckpt.preprocess)
    valid = torch.ones(x.shape[0], *x.shape[2:], dtype=torch.bool)
    if padded:  # padding at the right (image 0) and the bottom (the others): masked queries and keys
        valid[0, :, 80:], valid[1:, 90:] = False, False
    frame = analyze(model, x, valid=valid if padded else None, query_dependence="all")
    with torch.no_grad(), Capture(model, keep_tensors=True, stats=False) as cap:
        model(x)
    blocks = {info.name: info for info in list_blocks(model)}
    assert len(cap.records) >= 1
    for rec in cap.records:
        info = blocks[rec.name]
        with torch.no_grad():
            att = info.adapter.attention(info.module, rec.x)
        stride = (x.shape[2] / att.query_shape[0], x.shape[3] / att.query_shape[1])
        centres = [(np.arange(n) * s + s / 2).astype(int) for n, s in zip(att.query_shape, stride)]
        for b in range(x.shape[0]):
            (row,) = frame[(frame.block == rec.name) & (frame.image == b)].to_dict("records")
            cells = valid[b][np.ix_(*centres)].flatten().numpy()  # a cell counts where its centre is image
            assert cells.all() != padded
            expected = _nl_expected(att, b, stride, cells)
            assert np.isnan([row[n] for n, v in expected.items() if np.isnan(v)]).all()
            _check(row, {n: v for n, v in expected.items() if not np.isnan(v)})


def test_off_changes_no_column_and_the_kernels_agree(scenes, monkeypatch):
    # exact equality needs one thread count for every forward: analyze otherwise follows the machine's free cores,
    # and torch's convolutions round differently on 1 and 2 threads (~1e-9 in output)
    monkeypatch.setenv("NLANALYSIS_FREE_CORES", "0")
    ckpt = load_checkpoint(shipped_checkpoints()["embedded_gaussian"])
    model, x = ckpt.model.eval(), normalize(scenes, ckpt.preprocess)
    off = analyze(model, x, kernels="eager", query_dependence="off")
    assert not set(COLUMNS) & set(off.columns)
    every = analyze(model, x, kernels="eager", query_dependence="all")
    pd.testing.assert_frame_equal(every[off.columns], off, check_exact=True)  # measuring the suite moves nothing else
    native = analyze(model, x, kernels="auto", query_dependence="all")
    pd.testing.assert_frame_equal(native[list(COLUMNS)], every[list(COLUMNS)], check_exact=True)  # eager in both
    cheap = analyze(model, x, kernels="eager", query_dependence="cheap")
    pd.testing.assert_frame_equal(analyze(model, x, kernels="eager"), cheap, check_exact=True)  # cheap unless turned off
    assert cheap[list(EXPENSIVE)].isna().all().all()
    pd.testing.assert_frame_equal(cheap.drop(columns=list(EXPENSIVE)), every.drop(columns=list(EXPENSIVE)), check_exact=True)
    with pytest.raises(ValueError, match="query_dependence"):
        analyze(model, x, query_dependence="some")


def _vit(depth=2):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=depth).eval()
    gen = torch.Generator().manual_seed(2)
    for p in model.parameters():  # sharper maps than timm's init gives
        p.data.mul_(3.0)
    for block in model.blocks:  # a shared query direction (as trained maps have): the rank-1 fit converges
        dim = block.attn.qkv.in_features
        block.attn.qkv.bias.data[:dim] += 2.0 * torch.randn(dim, generator=gen)
    return model


def _vit_input():
    """Two 64 x 64 images with padding: the last two patch columns of the first, the last two patch rows of the second."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    valid = torch.ones(2, 64, 64, dtype=torch.bool)
    valid[0, :, 40:], valid[1, 40:] = False, False
    return x, valid


def _vit_expected(logits, a, q, k, cells, grid):
    """The columns of one head (``logits``, ``q``, ``k`` given) or of the head mean (``None``) from its rows ``a``
    over the valid keys (the patch keys last, ``cells`` of them)."""
    e = dict(zip(("logit_rank1", "att_gain_only", "gain_only_tv"), _rank1(np.log(a) if logits is None else logits)))
    if q is not None:
        e["unary_var_share"], e["att_pairwise_only"] = _dnl(q, k, 1.0, True)
    patch = a[:, a.shape[1] - len(cells) :]
    e["qk_nmi"] = _nmi(patch)
    e["att_distance_px"], e["att_local"], e["att_local_uniform"] = _spatial(patch, grid, (16, 16), cells, cells)
    return e


@pytest.mark.parametrize("keys", ["patch", "all"])
def test_vit_heads_against_the_full_maps(keys):
    model = _vit()
    x, valid = _vit_input()
    frame = analyze(model, x, valid=valid, keys=keys, query_dependence="all")
    eager = analyze(model, x, valid=valid, keys=keys, query_dependence="all", kernels="eager")
    # eager in both; the native path reads q/k from the attention call, the eager one from the qkv hook
    pd.testing.assert_frame_equal(eager[list(COLUMNS)], frame[list(COLUMNS)], rtol=1e-5, atol=1e-6)
    from nlanalysis.capture.heads import ViTCapture

    with torch.no_grad(), ViTCapture(model, keys=keys, keep_attention=True, stats=False) as cap:
        model(x)
    for rec in cap.records:
        att = rec.attention
        p, grid = att.layout.n_prefix, att.layout.grid
        q = (att.query * att.scale)[:, :, p:].double().numpy()  # patch queries
        k = att.key.double().numpy()
        logits_all = q @ k.transpose(0, 1, 3, 2)  # [B, H, n, N]
        for b in range(x.shape[0]):
            cells = valid[b, 8::16, 8::16].flatten().numpy()  # a patch counts where its centre is image
            keys_kept = np.concatenate([np.full(p, keys == "all"), cells])  # the keys: patch, or every token
            rows, maps = [], []
            for h in range(att.num_heads):
                logits = logits_all[b, h][cells]
                maps.append(_softmax(logits)[:, keys_kept])  # the model's softmax over every token
                e = _vit_expected(logits[:, keys_kept], maps[-1], q[b, h][cells], k[b, h][keys_kept], np.flatnonzero(cells), grid)
                rows.append((h, e))
            rows.append((schema.HEAD_MEAN, _vit_expected(None, np.mean(maps, axis=0), None, None, np.flatnonzero(cells), grid)))
            for h, e in rows:
                (row,) = frame[(frame.layer == rec.layer) & (frame["head"] == h) & (frame.image == b)].to_dict("records")
                _check(row, e, rtol=1e-4, atol=1e-5)
                assert np.isnan(row["att_abs"]) and np.isnan(row["att_norm_weighted"])
                assert np.isnan(row["unary_var_share"]) == (h == schema.HEAD_MEAN)


def test_extract_writes_the_columns_and_resumes(tmp_path, capsys):
    from extract_inputs import tiny_checkpoint, write_coco, write_photos

    photos = write_photos(tmp_path / "images", n=2, max_side=120)
    write_coco(tmp_path / "ann.json", photos)
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth")
    out = tmp_path / "run"
    args = ["extract", "--ckpt", str(ckpt), "--coco-ann", str(tmp_path / "ann.json"), "--coco-images", str(tmp_path / "images"),
            "--out", str(out), "--quiet", "--jsd-pairs", "16"]  # fmt: skip
    assert main([*args, "--query-dependence", "cheap"]) == 0
    metrics = load_run(out).metrics
    assert list(metrics.columns) == schema.metrics_columns(schema.NL, query=True)
    assert metrics[list(EXPENSIVE)].isna().all().all()
    assert metrics[["qk_nmi", "att_distance_px", "att_local", "att_local_uniform"]].notna().all().all()
    schema.check_ranges(metrics, "metrics.csv")
    written = (out / "metrics.csv").read_text()
    assert main([*args, "--query-dependence", "cheap"]) == 0  # resumes: nothing to redo
    assert (out / "metrics.csv").read_text() == written
    assert main([*args, "--query-dependence", "all"]) == 2  # another measurement: refused
    assert "other settings" in capsys.readouterr().err


def test_extract_with_the_locality_control_writes_its_columns_last_and_resumes(tmp_path, capsys):
    from extract_inputs import tiny_checkpoint, write_coco, write_photos

    photos = write_photos(tmp_path / "images", n=2, max_side=120)
    write_coco(tmp_path / "ann.json", photos)
    out = tmp_path / "run"
    args = ["extract", "--ckpt", str(tiny_checkpoint(tmp_path / "tiny.pth")), "--coco-ann", str(tmp_path / "ann.json"),
            "--coco-images", str(tmp_path / "images"), "--out", str(out), "--quiet", "--jsd-pairs", "0"]  # fmt: skip
    assert main([*args, "--query-dependence", "off", "--locality-control"]) == 2
    assert "--locality-control reads the query-dependence suite" in capsys.readouterr().err
    assert main([*args, "--query-dependence", "cheap", "--locality-control"]) == 0
    run = load_run(out)
    assert list(run.metrics.columns) == schema.metrics_columns(schema.NL, query=True, locality_control=True)
    assert run.info["settings"]["measure"]["locality_control"] is True
    schema.check_ranges(run.metrics, "metrics.csv")
    lifted = run.metrics[run.metrics["own_object_lift"].notna() & run.metrics["att_distance_px"].notna()]
    assert lifted["ctrl_local_sigma_px"].notna().all() and lifted["ctrl_local_own_object_lift_objects"].notna().any()
    from nlanalysis.tables import QUERY_TABLE_STATS, summarise

    summary = summarise(run.metrics.assign(label="run"), stats=QUERY_TABLE_STATS)  # the report's Table 2 forms the ratio
    ratio = run.metrics["own_object_lift_objects"] / run.metrics["ctrl_local_own_object_lift_objects"]
    checked = 0
    for block, part in summary.groupby("block"):
        logs = np.log(ratio[run.metrics["block"] == block].dropna())
        if len(logs):
            assert float(part["own_object_lift_objects_vs_local"].iloc[0]) == pytest.approx(float(np.exp(logs.mean())))
            checked += 1
    assert checked
    written = (out / "metrics.csv").read_text()
    assert main([*args, "--query-dependence", "cheap", "--locality-control"]) == 0  # resumes: nothing to redo
    assert (out / "metrics.csv").read_text() == written
    assert main([*args, "--query-dependence", "cheap"]) == 2  # without it: another measurement, refused
    assert "other settings" in capsys.readouterr().err


def test_vit_extract_has_the_columns_and_one_local_mass(tmp_path):
    """A padded ViT run: the suite's columns in metrics.csv equal ``analyze`` on the same input, and the
    locality's ``att_local`` (what ViT runs record) equals the suite's (one definition)."""
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    from extract_inputs import write_photos
    from helpers import randomize_
    from nlanalysis.data import load_image
    from nlanalysis.data.vit_preprocess import preprocess_image
    from nlanalysis.extract import DataSpec, MeasureSpec, ModelSpec, OutputSpec, RunSpec, run_extract
    from nlanalysis.extract.analysis_vit import ViTAnalysis

    root = tmp_path / "images"
    write_photos(root, n=1, max_side=120)
    model = randomize_(timm_vit.VisionTransformer(img_size=56, patch_size=14, embed_dim=64, depth=1, num_heads=2,
                                                  num_classes=0, init_values=0.5), std=0.05).eval()  # fmt: skip
    spec = RunSpec(ModelSpec(ViTAnalysis(model, size=56)), DataSpec(images=[str(root)]), OutputSpec(tmp_path / "run"),
                   MeasureSpec(jsd_pairs=0, query_dependence="cheap"))  # fmt: skip
    run = load_run(run_extract(spec, progress=False).path)
    assert list(run.metrics.columns) == schema.metrics_columns(schema.VIT, query=True)
    assert run.info["settings"]["measure"]["query_dependence"] == "cheap"
    x, valid = preprocess_image(load_image(next(root.iterdir())), 56, "pad")
    assert not valid.all()  # padding: masked queries and keys
    want = analyze(model, x[None], valid=valid[None], jsd_pairs=0, query_dependence="cheap")
    got = run.metrics.sort_values("head", key=lambda h: h.where(h >= 0, 99)).reset_index(drop=True)
    for name in COLUMNS:
        np.testing.assert_allclose(got[name].to_numpy(float), want[name].to_numpy(float), rtol=1e-5, atol=1e-6, err_msg=name)


def test_table1_has_the_measured_query_columns_only(scenes):
    """Table 1 (nlanalysis/tables.py) shows a query column's header where the run measured it (not all NaN): the
    cheap suite's for embedded Gaussian, none of the expensive ones; none at all for a run without the suite."""
    from nlanalysis.tables import QUERY_STATS, caption, format_table, summarise

    ckpt = load_checkpoint(shipped_checkpoints()["embedded_gaussian"])
    model, x = ckpt.model.eval(), normalize(scenes, ckpt.preprocess)
    cheap = analyze(model, x, jsd_pairs=0, query_dependence="cheap")
    off = analyze(model, x, jsd_pairs=0, query_dependence="off")
    assert QUERY_STATS == ["logit_rank1", "att_gain_only", "gain_only_tv", "unary_var_share", "att_pairwise_only", "qk_nmi",
                           "att_distance_px"]  # fmt: skip
    headers = schema.headers()
    shown = format_table(summarise(cheap, by=())).columns
    measured = ["unary_var_share", "att_pairwise_only", "qk_nmi", "att_distance_px"]
    assert [h for h in shown if h in {headers[c] for c in QUERY_STATS}] == [headers[c] for c in measured]
    assert list(shown).index(headers["att"]) < list(shown).index(headers["unary_var_share"])  # after the paper's columns
    assert "q-k NMI" in caption(summarise(cheap, by=()))
    summary_off = summarise(off, by=())
    assert not {headers[c] for c in QUERY_STATS} & set(format_table(summary_off).columns)
    assert "q-k NMI" not in caption(summary_off)
