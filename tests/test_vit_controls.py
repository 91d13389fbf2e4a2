"""The per-head random-projection control: its maps have the head's (and the head mean's) entropy, its
statistics are those of the matched maps (checked by hand with scipy), the capture hands it the right
tokens, masks and labels, and it reaches the frame and extract's metrics."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.special import softmax
from scipy.stats import entropy

from helpers import randomize_
from nlanalysis.vit import analyze_vit
from nlanalysis.capture import cell_centres, valid_cells
from nlanalysis.vit import ViTCapture
from nlanalysis.measure.head_controls import CONTROL_COLUMNS, control_generator, head_controls, head_form_controls, matched_controls
from nlanalysis.measure.controls import draw_projections
from nlanalysis.blocks.heads import HeadAttention
from nlanalysis.blocks.tokens import TokenLayout

timm_vit = pytest.importorskip("timm.models.vision_transformer")
LAYOUT = TokenLayout((4, 5), 1, 1)
HEADS, D = 3, 6


def _timm(**kw):
    args = dict(img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=4, num_classes=0, qkv_bias=True, init_values=0.5)
    return randomize_(timm_vit.VisionTransformer(**{**args, **kw}), std=0.2).eval()


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(2, LAYOUT.n_tokens, 16, generator=g)
    entropy = torch.tensor([[0.35, 0.6, 0.9, 0.7], [0.5, math.nan, 0.8, 0.6]], dtype=torch.float64)
    valid = torch.ones(2, *LAYOUT.grid, dtype=torch.bool)
    valid[1, :, 3:] = False  # image 1: two padded columns
    return tokens, entropy, valid


def _rows(control, h, valid_i):
    """Map ``h`` of one image's controls, full, restricted to valid queries and keys (keys renormalised), float64."""
    v = valid_i.flatten()
    rows = control.maps.full()[h].double()[v][:, v]
    return rows / rows.sum(-1, keepdim=True)


def _entropy(rows):
    return float((-(rows * rows.clamp_min(1e-300).log()).sum(-1) / math.log(rows.shape[1])).mean())


def _cosine_distance(rows):
    """Mean over all ordered pairs, i = j included, of 1 - cos (scipy pdist gives the i != j ones)."""
    n = rows.shape[0]
    return float(pdist(rows.numpy(), "cosine").sum() * 2 / (n * n))


def _own_object(rows, labels):
    """Mean over rows of queries on an object of the row's mass on that object's keys (rows renormalised)."""
    on = labels > 0
    if not on.any():
        return math.nan
    same = (labels[:, None] == labels[None, :]).double()
    return float((rows * same).sum(-1)[on].mean())


def test_each_control_has_its_maps_entropy():
    tokens, entropy, valid = _case()
    controls = matched_controls(tokens, LAYOUT, entropy, D, valid=valid, generator=torch.Generator().manual_seed(1))
    assert [c.maps.batch_size for c in controls] == [HEADS + 1] * 2  # every head, then the head mean
    assert controls[1].ok.tolist() == [True, False, True, True]  # a head without an entropy gets no control
    for i in range(2):
        for h in range(HEADS + 1):
            if controls[i].ok[h]:
                assert _entropy(_rows(controls[i], h, valid[i])) == pytest.approx(float(entropy[i, h]), abs=1e-5)


def test_an_entropy_the_bisection_cannot_reach_gets_no_control():
    tokens, entropy, valid = _case()
    entropy[0, 0] = 1.5  # above 1: no temperature gives it
    controls = matched_controls(tokens, LAYOUT, entropy, D, valid=valid)
    assert not controls[0].ok[0] and controls[0].ok[1] and math.isnan(controls[0].temperature[0])
    assert math.isnan(head_controls(tokens, LAYOUT, entropy, D, valid=valid, jsd_pairs=0)["ctrl_att"][0, 0])


def test_control_statistics_are_those_of_the_matched_maps():
    tokens, entropy, valid = _case()
    controls = matched_controls(tokens, LAYOUT, entropy, D, valid=valid, generator=torch.Generator().manual_seed(1))
    got = head_controls(tokens, LAYOUT, entropy, D, valid=valid, generator=torch.Generator().manual_seed(1), jsd_pairs=0)
    assert set(got) == set(CONTROL_COLUMNS) and all(t.shape == (2, HEADS + 1) for t in got.values())
    for i in range(2):
        for h in range(HEADS + 1):
            if not controls[i].ok[h]:
                assert math.isnan(got["ctrl_att"][i, h]) and math.isnan(got["ctrl_temperature"][i, h])
                continue
            assert float(got["ctrl_att"][i, h]) == pytest.approx(_cosine_distance(_rows(controls[i], h, valid[i])), abs=1e-6)
            assert float(got["ctrl_temperature"][i, h]) == pytest.approx(float(controls[i].temperature[h]))


def test_the_capture_hands_the_control_its_tokens_masks_and_labels():
    """Rebuilt from the attention modules' own inputs, the patch masks and labels, and the control's generator:
    entropies, ctrl_att and ctrl_att_own_object agree with what the capture reports (register tokens, padding)."""
    model = _timm(reg_tokens=2, embed_dim=48)
    x = torch.randn(3, 3, 28, 28)
    valid = torch.ones(3, 28, 28, dtype=torch.bool)
    valid[1, :, 19:] = False
    objects = torch.zeros(3, 28, 28, dtype=torch.long)
    objects[:, 2:15, 3:16], objects[:, 15:27, 14:27] = 1, 2
    inputs = []
    hooks = [blk.attn.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for blk in model.blocks]
    with torch.no_grad(), ViTCapture(model, controls=True, seed=5, jsd_pairs=16) as cap:
        cap.set_valid(valid)
        cap.set_objects(objects)
        model(x)
    for hook in hooks:
        hook.remove()
    for rec, tokens in zip(cap.records, inputs, strict=True):
        grid = rec.layout.grid
        cells, labels = valid_cells(valid, grid), cell_centres(objects, grid)
        entropy = rec.stats.att_entropy
        controls = matched_controls(tokens, rec.layout, entropy, 12, valid=cells,
                                    generator=control_generator(5, rec.call, rec.layer))  # fmt: skip
        got = rec.stats.controls
        for i in range(3):
            v = cells[i].flatten()
            for h in range(5):
                rows = _rows(controls[i], h, cells[i])
                assert _entropy(rows) == pytest.approx(float(entropy[i, h]), abs=1e-5)
                assert float(got["ctrl_att"][i, h]) == pytest.approx(_cosine_distance(rows), abs=1e-6)
                assert float(got["ctrl_att_own_object"][i, h]) == pytest.approx(_own_object(rows, labels[i].flatten()[v]), abs=1e-6)
        assert got["ctrl_att_jsd"].isfinite().all()


def _naive_tau(logits, target):
    """Temperature bringing softmax(tau * logits) (float64, scipy) to normalised entropy ``target``: bisection in log tau."""
    lo, hi = -12.0, 12.0
    while hi - lo > 1e-11:
        mid = (lo + hi) / 2
        p = softmax(math.exp(mid) * logits)
        lo, hi = (mid, hi) if entropy(p) / math.log(len(p)) > target else (lo, mid)
    return math.exp((lo + hi) / 2)


def test_per_query_control_matches_every_rows_entropy_per_head_and_head_mean():
    """head_form_controls against a float64 rebuild: the same draw of W_q, W_k per map, each row's tau by a naive
    bisection to the trained row's entropy (scipy, keys renormalised over valid patches), att by pdist."""
    tokens, _, valid = _case()
    g = torch.Generator().manual_seed(3)
    q, k = (torch.randn(2, HEADS, LAYOUT.n_tokens, D, generator=g) * 1.5 for _ in range(2))
    trained = HeadAttention(q, k, D**-0.5, LAYOUT, "patch")
    got = head_form_controls(tokens, LAYOUT, trained, D, valid=valid, generator=torch.Generator().manual_seed(8), jsd_pairs=0)
    assert got["ctrl_form"] == "softmax-per-query" and got["ctrl_form_att"].shape == (2, HEADS + 1)
    gen = torch.Generator().manual_seed(8)
    for i in range(2):
        v = valid[i].flatten().numpy()
        w = draw_projections(HEADS + 1, D, tokens.shape[-1], gen).double()
        x = tokens[i, LAYOUT.n_prefix :].double().numpy()
        maps = trained.full()[i].double().numpy()[:, v][:, :, v]  # [heads, n, n] valid patches
        maps = np.concatenate([maps, maps.mean(0, keepdims=True)])  # the head mean
        for h in range(HEADS + 1):
            query, key = x @ w[h, 0].numpy().T, x @ w[h, 1].numpy().T
            rows, gaps = [], []
            for r, i_q in enumerate(np.flatnonzero(v)):
                target = entropy(maps[h, r] / maps[h, r].sum()) / math.log(v.sum())
                logits = (query[i_q] @ key.T)[v]
                rows.append(softmax(_naive_tau(logits, target) * logits))
                gaps.append(abs(entropy(rows[-1]) / math.log(v.sum()) - target))
            assert max(gaps) < 1e-7, "every row at its own entropy"
            assert float(got["ctrl_form_att"][i, h]) == pytest.approx(_cosine_distance(torch.tensor(np.array(rows))), abs=2e-5)
            assert float(got["ctrl_form_gap"][i, h]) < 1e-5
        assert got["ctrl_form_att_own_object"][i].isnan().all()  # no labels
    with pytest.raises(ValueError, match="patch keys"):
        head_form_controls(tokens, LAYOUT, HeadAttention(q, k, D**-0.5, LAYOUT, "all"), D, generator=gen)


def test_sharper_heads_get_controls_that_vary_more_with_the_query():
    tokens, _, _ = _case()
    entropy = torch.tensor([[0.2, 0.5, 0.8, 0.5]] * 2, dtype=torch.float64)
    got = head_controls(tokens, LAYOUT, entropy, D, jsd_pairs=0, generator=torch.Generator().manual_seed(2))
    att = got["ctrl_att"][:, :HEADS]
    assert (att[:, 0] > att[:, 1]).all() and (att[:, 1] > att[:, 2]).all()


def test_controls_leave_every_other_statistic_and_draw_alone():
    """The controls have their own random stream: the sampled JSD pairs of later forwards stay as without them."""
    model, x = _timm(), torch.randn(3, 3, 28, 28)
    with_controls = analyze_vit(model, x, controls=True, batch_size=1, jsd_pairs=8)
    plain = analyze_vit(model, x, batch_size=1, jsd_pairs=8)
    for col in ("att", "att_jsd", "att_entropy", "input", "output"):
        assert np.allclose(with_controls[col], plain[col], equal_nan=True), col


def test_controls_reach_the_frame_and_extract(tmp_path):
    model = _timm()
    x = torch.randn(2, 3, 28, 28)
    frame = analyze_vit(model, x, controls=True)
    assert frame[["ctrl_att", "ctrl_att_jsd"]].notna().all().all() and frame["ctrl_att_own_object"].isna().all()  # no labels
    assert frame["ctrl_temperature"].notna().all()  # the head mean has its own matched control
    assert (frame["ctrl_form"] == "softmax-per-query").all() and frame[["ctrl_form_att", "ctrl_form_gap"]].notna().all().all()
    assert "ctrl_att" not in analyze_vit(model, x).columns and "ctrl_att" not in analyze_vit(model, x, controls=True, keys="all")
    plain = analyze_vit(model, x)
    assert np.allclose(plain["att"], frame["att"]) and np.allclose(plain["att_entropy"], frame["att_entropy"])

    from PIL import Image

    from nlanalysis.extract import DataSpec, MeasureSpec, ModelSpec, OutputSpec, RunSpec, load_run, run_extract

    torch.save(model.state_dict(), tmp_path / "vit.pth")
    paths = []
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    spec = RunSpec(ModelSpec(tmp_path / "vit.pth", options={"vit_size": 28, "vit_heads": 4}), DataSpec(images=paths), OutputSpec(tmp_path / "run"),
                   MeasureSpec(jsd_pairs=16, controls=True))  # fmt: skip
    run_extract(spec, progress=False)
    run = load_run(tmp_path / "run")
    assert run.metrics["ctrl_att"].notna().all() and run.info["settings"]["measure"]["controls"] is True
