"""The per-head random-projection control: its maps have the head's entropy, its statistics are those
of the matched maps (checked by hand with scipy), and it reaches the frame and extract's metrics."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from helpers import randomize_
from nlanalysis.vit import analyze_vit
from nlanalysis.vit.controls import CONTROL_COLUMNS, MeanAttention, head_controls, matched_controls
from nlanalysis.vit.tokens import TokenLayout

timm_vit = pytest.importorskip("timm.models.vision_transformer")
LAYOUT = TokenLayout((4, 5), 1, 1)
HEADS, D = 3, 6


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(2, LAYOUT.n_tokens, 16, generator=g)
    entropy = torch.tensor([[0.35, 0.6, 0.9, 0.7], [0.5, math.nan, 0.8, 0.6]], dtype=torch.float64)
    valid = torch.ones(2, *LAYOUT.grid, dtype=torch.bool)
    valid[1, :, 3:] = False  # image 1: two padded columns
    return tokens, entropy, valid


def _rows(att, valid_i):
    """Full maps of one image restricted to valid queries and keys (keys renormalised), float64."""
    v = valid_i.flatten()
    rows = att.full()[0].double()[v][:, v]
    return rows / rows.sum(-1, keepdim=True)


def _entropy(rows):
    return float((-(rows * rows.clamp_min(1e-300).log()).sum(-1) / math.log(rows.shape[1])).mean())


def _cosine_distance(rows):
    """Mean over all ordered pairs, i = j included, of 1 - cos (scipy pdist gives the i != j ones)."""
    n = rows.shape[0]
    return float(pdist(rows.numpy(), "cosine").sum() * 2 / (n * n))


def test_each_control_has_its_heads_entropy():
    tokens, entropy, valid = _case()
    controls = matched_controls(tokens, LAYOUT, entropy, D, valid=valid, generator=torch.Generator().manual_seed(1))
    assert controls[1][1] is None  # a head without an entropy gets no control
    for i in range(2):
        for h in range(HEADS):
            if controls[i][h] is not None:
                assert _entropy(_rows(controls[i][h], valid[i])) == pytest.approx(float(entropy[i, h]), abs=1e-5)


def test_control_statistics_are_those_of_the_matched_maps():
    tokens, entropy, valid = _case()
    controls = matched_controls(tokens, LAYOUT, entropy, D, valid=valid, generator=torch.Generator().manual_seed(1))
    got = head_controls(tokens, LAYOUT, entropy, D, valid=valid, generator=torch.Generator().manual_seed(1), jsd_pairs=0)
    assert set(got) == set(CONTROL_COLUMNS) and all(t.shape == (2, HEADS + 1) for t in got.values())
    for i in range(2):
        for h in range(HEADS):
            one = controls[i][h]
            if one is None:
                assert math.isnan(got["ctrl_att"][i, h]) and math.isnan(got["ctrl_temperature"][i, h])
                continue
            assert float(got["ctrl_att"][i, h]) == pytest.approx(_cosine_distance(_rows(one, valid[i])), abs=1e-6)
            assert float(got["ctrl_temperature"][i, h]) == pytest.approx(one.scale)
    mean = _rows(MeanAttention(controls[0]), valid[0])  # the head mean's control: the mean of the heads' maps
    by_hand = torch.stack([controls[0][h].full()[0].double() for h in range(HEADS)]).mean(0)
    assert torch.allclose(mean, by_hand / by_hand.sum(-1, keepdim=True))
    assert float(got["ctrl_att"][0, HEADS]) == pytest.approx(_cosine_distance(mean), abs=1e-6)
    assert math.isnan(got["ctrl_att"][1, HEADS]) and math.isnan(got["ctrl_temperature"][0, HEADS])


def test_sharper_heads_get_controls_that_vary_more_with_the_query():
    tokens, _, _ = _case()
    entropy = torch.tensor([[0.2, 0.5, 0.8, 0.5]] * 2, dtype=torch.float64)
    got = head_controls(tokens, LAYOUT, entropy, D, jsd_pairs=0, generator=torch.Generator().manual_seed(2))
    att = got["ctrl_att"][:, :HEADS]
    assert (att[:, 0] > att[:, 1]).all() and (att[:, 1] > att[:, 2]).all()


def test_controls_reach_the_frame_and_extract(tmp_path):
    model = randomize_(timm_vit.VisionTransformer(img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=4,
                                                  num_classes=0), std=0.2).eval()  # fmt: skip
    x = torch.randn(2, 3, 28, 28)
    frame = analyze_vit(model, x, controls=True)
    assert frame[["ctrl_att", "ctrl_att_jsd"]].notna().all().all() and frame["ctrl_att_own_object"].isna().all()  # no labels
    heads = frame[frame["head"] >= 0]
    assert heads["ctrl_temperature"].notna().all() and frame[frame["head"] < 0]["ctrl_temperature"].isna().all()
    assert "ctrl_att" not in analyze_vit(model, x).columns and "ctrl_att" not in analyze_vit(model, x, controls=True, keys="all")
    plain = analyze_vit(model, x)
    assert np.allclose(plain["att"], frame["att"]) and np.allclose(plain["att_entropy"], frame["att_entropy"])

    from PIL import Image

    from nlanalysis.extract import load_run, run_extract

    torch.save(model.state_dict(), tmp_path / "vit.pth")
    paths = []
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    run_extract(tmp_path / "vit.pth", images=paths, out=tmp_path / "run", controls=True, vit_size=28, jsd_pairs=16, progress=False)
    run = load_run(tmp_path / "run")
    assert run.metrics["ctrl_att"].notna().all() and run.info["settings"]["measure"]["controls"] is True
