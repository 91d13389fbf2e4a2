"""The pilot's readings (reports/controls/pilot.py ``scores``, ``pair_confusion``) against hand counts on fixed logits."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

_spec = importlib.util.spec_from_file_location("pilot", Path(__file__).resolve().parents[1] / "reports/controls/pilot.py")
pilot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pilot)


class Fixed(nn.Module):
    """Returns row i of ``logits`` for input i (the input holds i)."""

    def __init__(self, logits: np.ndarray) -> None:
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x.long()]


def _logits(prefer: list[dict[int, float]]) -> np.ndarray:
    """10-way logits: 0 everywhere but the given classes."""
    out = np.zeros((len(prefer), 10))
    for row, values in zip(out, prefer):
        for c, v in values.items():
            row[c] = v
    return out


def test_scores_on_one_pair_scene_by_hand():
    # one scene of the pair (2, 4): group 0 holds class 2 (3 items), group 1 class 4 (3 items)
    y = np.array([2, 2, 2, 4, 4, 4])
    group, scene = np.array([0, 0, 0, 1, 1, 1]), np.zeros(6, int)
    prefer = [{2: 2.0}, {4: 1.0}, {6: 3.0, 2: 2.5},  # right; wrong within the pair; wrong outside, right within it
              {4: 2.0}, {2: 0.5}, {0: 4.0, 2: 3.0}]  # right; wrong within the pair; wrong outside and within
    model = Fixed(_logits(prefer))
    x = torch.arange(6)
    plain = pilot.scores(model, x, y, scene, group)
    assert set(plain) == {"items", "alone", "scene_sum", "group_sum", "scene_top2", "true_set"}  # the old columns
    with_pair = pilot.scores(model, x, y, scene, group, pair=(2, 4))
    assert {k: with_pair[k] for k in plain} == plain
    assert np.isclose(with_pair["alone"], 100 * 2 / 6)
    assert np.isclose(with_pair["pair_alone"], 100 * 3 / 6)  # items 0, 2, 3
    assert np.isclose(with_pair["true_set"], with_pair["pair_alone"])  # every scene holds the pair: the same restriction
    # summed log-probabilities, 2 minus 4: group 0 2 - 1 + 2.5 > 0 -> right; group 1 -2 + 0.5 + 3 > 0 -> all wrong
    assert np.isclose(with_pair["pair_group_sum"], 50.0)


@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value")  # pairs without items: NaN
def test_pair_confusion_counts_two_way_and_ten_way_errors():
    y = np.array([2, 2, 4, 4])
    prefer = [{2: 1.0}, {4: 1.0, 6: 2.0}, {2: 1.0}, {2: 1.0, 4: 2.0}]
    table = pilot.pair_confusion(Fixed(_logits(prefer)), torch.arange(4), y)
    row = table[(table.a == 2) & (table.b == 4)].iloc[0]
    assert (row.a_vs_b_error, row.b_vs_a_error, row.two_way_error) == (50.0, 50.0, 50.0)
    assert (row.a_as_b, row.b_as_a) == (0.0, 50.0)  # item 1's argmax is 6, item 2's is 2
    assert len(table) == 13  # 10 pairs of tops + 3 of footwear
