"""Scene design ``query-specific-v4``: issue 16's fourth positive-control design (``reports/controls/PLAN.md``).

Why a fourth: the earlier ``query-specific`` designs (v1-v3) let one context shared by every position gain more
than the own group's vote. Each scene drew its own pair of look-alike classes, so a pooled vector that tells which
pair the scene holds restricts every item to two classes (the pilot of ``reports/controls/pilot.py`` on v2's
scenes: an item alone 43.6%, its own group's vote 58.4%, restricted to the scene's two true classes 72.0%); and
groups of unequal size let a pooled vector name the majority class (right for 60-62% of the items where the sizes
differ).

v4 changes the class draw only; placement, clutter, corruption and the tint are the other designs'
(``scenes._compose``, the same code):

- every scene holds the same two classes, :data:`PAIR`: among the look-alike pairs of
  :data:`~nlanalysis.data.scenes.LOOKALIKES`, the one the pilot's classifier confuses most when it chooses between
  the two (``reports/controls/pilot_pairs.csv``, fixed before any v4 scene was scored);
- two groups of equal size ``k``, drawn uniformly from :func:`group_sizes` (``num_items=(4, 10)``, v2's: 2..5 items a
  group, 4..10 a scene);
- which group gets which class: a fair coin per scene; the tints as in ``query-specific`` (two hues at least a third
  of the circle apart, random, independent of the classes); the items of both groups interleaved at random.

Equal groups in the kept scene: an item that finds no place, or that ends with fewer than ``min_pixels`` visible
pixels, leaves its group short. The scene is then drawn again with the same ``k`` (the coin, the items, their
placement, corruption and tints), from the same generator, so a scene still depends only on the generator's state.
Redrawn rather than dropping an item of the other group as well: that item is already on the canvas (placed,
perhaps occluding others, corrupted, tinted), and taking it out afterwards would leave a hole in what it covered or
an unlabelled item in the image. Redraws are rare with the shipped canvas (112 pixels, items of 20-40): of the first
1,000 scenes (seed 0, ``num_items=(4, 10)``) 29 val and 24 train scenes were redrawn, all but one with ``k = 5``, none
more than twice, and ``k`` never shrank; they select layouts where every item stays visible (about 1 in 9 of the
10-item draws is redrawn), which tells nothing about class or tint. After
:data:`REDRAWS` failed draws (a canvas too small for ``2k`` items) the scene is drawn with ``k - 1``, down to 2,
then ValueError.

What a query-independent block can still carry (PLAN.md, session 20): one vector for the whole scene knows the
class pair, but it is the same in every scene, so it says nothing that a network without the block does not learn;
pooled over both groups, it says nothing about which tint goes with which class, unless it holds a class x tint code
(e.g. the hue, as its cosine and sine, pooled over the items of one class) that each position then compares with its
own tint downstream. So v4 makes the shared route harder (it must form such a code instead of reading a class
pair); it does not make it impossible. An NL block needs no code: a query that attends the items of its own tint
receives their class directly. Whether either happens is for the trained margins to say.
"""
from __future__ import annotations

import numpy as np

from .scenes import Scene, SceneParams, _compose

__all__ = ["PAIR", "REDRAWS", "group_sizes", "make_scene_v4"]

PAIR: tuple[int, int] = (2, 4)
"""The two Fashion-MNIST classes of every v4 scene: Pullover and Coat, the look-alike pair with the largest two-way
error of the pilot's classifier on v2's single items (43.3%: 29.3% of pullovers scored as coats, 57.4% of coats as
pullovers, choosing between the two only; 10-way, 19.4% and 46.2%: also the most confused pair), next Coat/Shirt 38.6%
(``reports/controls/pilot_pairs.csv``, ``pilot.py --confusion``)."""
REDRAWS = 50
"""Draws tried at one group size before the scene is drawn with one item fewer a group."""


def group_sizes(num_items: tuple[int, int]) -> tuple[int, int]:
    """The range (inclusive) of ``k``, the items of each group, for ``SceneParams.num_items = (lo, hi)``: from
    ``max(2, ceil(lo / 2))`` to ``max(that, hi // 2)``, so a scene holds ``lo..hi`` items where ``lo >= 4`` (at
    least 2 a group, as ``query-specific``'s groups, whatever ``hi`` says)."""
    lo, hi = num_items
    first = max(2, -(-lo // 2))
    return first, max(first, hi // 2)


def _draw(rng: np.random.Generator, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(item indices, group of each)``: ``k`` items of each class of :data:`PAIR`, group 0's class by a fair coin,
    in random order."""
    classes = PAIR if rng.random() < 0.5 else PAIR[::-1]
    index = np.concatenate([np.flatnonzero(labels == c)[rng.integers(int((labels == c).sum()), size=k)] for c in classes])
    groups = np.repeat(np.arange(2), k)
    order = rng.permutation(2 * k)
    return index[order], groups[order]


def make_scene_v4(rng: np.random.Generator, items: np.ndarray, labels: np.ndarray, p: SceneParams) -> Scene:
    """One ``query-specific-v4`` scene (what :func:`~nlanalysis.data.scenes.make_scene` returns for that design):
    both groups keep exactly ``k`` items each (see the module's docstring for the redraws)."""
    if not np.isin(PAIR, labels).all():
        raise ValueError(f"query-specific-v4 scenes need items of classes {sorted(PAIR)}")
    lo, hi = group_sizes(p.num_items)
    first = int(rng.integers(lo, hi + 1))
    for k in range(first, 1, -1):
        for _ in range(REDRAWS):
            scene = _compose(rng, items, labels, *_draw(rng, labels, k), p, tinted=True)
            if np.array_equal(np.bincount(scene.groups, minlength=2), (k, k)):
                return scene
    raise ValueError(f"query-specific-v4: no draw kept two equal groups of {first}..2 items in {REDRAWS} tries each "
                     f"(a {p.size}-pixel canvas with items of {p.item_side[0]}-{p.item_side[1]} pixels)")  # fmt: skip
