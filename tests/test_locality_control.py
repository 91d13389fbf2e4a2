"""reports/controls/locality.py: the locality control of the object-context lifts (PLAN.md, session 15, 02:50/02:55)."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nlanalysis.data.scenes import demo_scenes_path
from nlanalysis.extract.coco import load_coco
from nlanalysis.measure.query_dep import grid_centres
from nlanalysis.metrics.object_context import object_context
from nlanalysis.metrics.query_dependence import row_chunks

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("locality", ROOT / "reports/controls/locality.py")
locality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(locality)
KEPT = ROOT / "reports/controls/runs/planted-v3l"


def _naive_distance(pos: np.ndarray, sigma: float) -> float:
    """Mean over queries of sum_k p_qk ||p_q - p_k||, p the softmax of -d^2 / 2 sigma^2, float64 loops."""
    total = 0.0
    for q in range(len(pos)):
        d = np.sqrt(((pos - pos[q]) ** 2).sum(1))
        w = np.exp(-(d**2) / (2 * sigma**2))
        total += (w / w.sum() * d).sum()
    return total / len(pos)


def test_control_distance_is_the_naive_one_and_sigma_hits_the_target():
    pos = grid_centres((5, 6), (8.0, 8.0))
    grid = locality.locality_grid((5, 6), (8.0, 8.0))
    for sigma in (3.0, 11.0):
        assert grid.mean_distance(sigma) == pytest.approx(_naive_distance(pos.numpy(), sigma), rel=1e-10)
    sigma = grid.match_sigma(12.5)
    assert _naive_distance(pos.numpy(), sigma) == pytest.approx(12.5, rel=1e-6)
    uniform = _naive_distance(pos.numpy(), 1e9)
    assert grid.match_sigma(uniform * 1.01) == math.inf and math.isnan(grid.match_sigma(0.0))


def test_labels_positions_and_lifts_reproduce_the_kept_locality_twin():
    """On the locality twin's own maps (its sigma in cells x 8 px), the control's labelling, positions and object context
    give the lifts and the attention distance the extract pipeline kept for the same images."""
    ann, _ = demo_scenes_path("query-specific", (4, 10))
    coco = load_coco(ann)
    sigma = json.loads((ROOT / "reports/controls/planted_v3l.json").read_text())[0]["s_locality"] * 8
    kept = pd.read_csv(KEPT / "locality_s0" / "metrics.csv").head(12)
    pos = grid_centres((14, 14), (8.0, 8.0))
    maps = torch.softmax(-torch.cdist(pos, pos) ** 2 / (2 * sigma**2), -1)[None]  # maps by distance alone
    for _, r in kept.iterrows():
        labels, cats = locality.image_labels(coco, int(r.image_id), (14, 14))
        got = object_context(row_chunks(maps, 64), labels[None], labels[None], cats[None])
        for name in locality.LIFTS:
            assert float(got[name][0]) == pytest.approx(r[name], rel=1e-5, nan_ok=True), (r.image_id, name)
        assert locality.locality_grid((14, 14), (8.0, 8.0)).mean_distance(sigma) == pytest.approx(r.att_distance_px, rel=1e-5)


def test_the_locality_twin_matches_its_control_and_the_planted_block_exceeds_it(tmp_path):
    """The 02:55 entry's own check on two images per set: the twin's ratio to its control is ~1, the planted's above."""
    ann, _ = demo_scenes_path("query-specific", (4, 10))
    sets = []
    for name in ("planted_s0", "locality_s0"):
        (tmp_path / name).mkdir()
        pd.read_csv(KEPT / name / "metrics.csv").head(6).to_csv(tmp_path / name / "metrics.csv", index=False)
        sets.append(tmp_path / name)
    rows = pd.concat([locality.set_controls(s, ann).assign(group=s.name) for s in sets])
    ratio = rows[["group"]].assign(r=rows["same_category_lift"] / rows["ctrl_local_same_category_lift"]).dropna()
    twin, planted = ratio[ratio.group == "locality_s0"].r, ratio[ratio.group == "planted_s0"].r
    assert len(twin) >= 4 and np.allclose(twin, 1, atol=1e-3)
    assert (planted > 1.3).all()


def test_read_words_follow_the_interval_of_the_log_ratio():
    row = pd.Series({"same_category_lift": 2.0, "log_ctrl_same_category_lift": 0.0, "log_ratio_same_category_lift": 0.7,
                     "log_ratio_same_category_lift_low": 0.2, "log_ratio_same_category_lift_high": 1.1,
                     "own_object_lift_objects": 1.0, "log_ctrl_own_object_lift_objects": 0.1, "log_ratio_own_object_lift_objects": -0.1,
                     "log_ratio_own_object_lift_objects_low": -0.3, "log_ratio_own_object_lift_objects_high": 0.05})  # fmt: skip
    words = locality.read(row)
    assert words[0].endswith("above its locality control") and "ratio 2.014 [1.221, 3.004]" in words[0]
    assert words[1].endswith("not distinguishable from locality")
    below = row.copy()
    below["log_ratio_same_category_lift_low"], below["log_ratio_same_category_lift_high"] = -0.5, -0.1
    assert locality.read(below)[0].endswith("below its locality control")
    below["unread_same_category_lift"] = 3
    assert locality.read(below)[0].endswith("below its locality control (3 images without a readable control left out)")


def test_result_sets_without_the_category_lift_are_read_on_the_own_object_lift(tmp_path):
    """The shipped reference runs (shared scenes, written before `same_category_lift` existed): the own-object lift alone."""
    ann, _ = demo_scenes_path("shared")
    sets = []
    for seed in (0, 1):
        (tmp_path / f"gaussian_s{seed}").mkdir()
        pd.read_csv(ROOT / f"reports/trained/runs/gaussian_s{seed}/metrics.csv").head(4).to_csv(tmp_path / f"gaussian_s{seed}" / "metrics.csv", index=False)
        sets.append(tmp_path / f"gaussian_s{seed}")
    rows, table = locality.summary(sets, ann)
    assert "same_category_lift" not in rows and rows["ctrl_local_own_object_lift_objects"].notna().all()
    words = locality.read(table.iloc[0])
    assert len(words) == 1 and words[0].startswith("own_object_lift_objects")
