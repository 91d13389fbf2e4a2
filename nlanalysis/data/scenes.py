"""Multi-object scenes composed from Fashion-MNIST items, written as a COCO instances data set.

Why: the query-dependence analysis (GCNet, arXiv 1904.11492, Sec. 3) needs trained NL blocks,
and an NL block only learns something when global context helps the task. A pilot found that
when each item is classified on its own an NL block adds nothing, while when every item of a
scene shares one class (other items disambiguate a corrupted one) it added 11 mIoU points. So:

- ``shared`` (default): 3-6 items of ONE class per scene;
- ``independent``: items of random classes, the control where context is useless;
- ``query-specific``: two groups of 2-3 items (the positive control, below);
- ``query-specific-v4``: the same fixed look-alike pair in every scene, two groups of equal size (:mod:`.scenes_v4`).

All designs draw everything else from the same distributions (sizes, placement, clutter,
corruption); only the class sampling differs (and the tint of ``query-specific``). Each item is
scaled to a random side and placed on a dark canvas with mild smooth clutter, with limited
overlap: later items occlude earlier ones, and every earlier item keeps most of its silhouette.
Then each item is corrupted so that one item alone is ambiguous: a flat gray patch (an
occluder, labelled background) over part of its box, and/or strong pixel noise in its box
(sensor noise, labels unchanged). Masks are the visible silhouettes: pixels of the scaled clean
item above ``mask_threshold``, minus what later items and patches cover; so masks never overlap.

``query-specific`` (issue 16's positive control): context helps only when a query attends to
*particular* other items. The two groups get two look-alike classes (both from
:data:`LOOKALIKES`: tops, dresses and coats, or footwear; Trouser and Bag, recognisable alone,
are left out) and two tints, hues drawn per scene at least a third of the hue circle apart, on
the item's pixels: a group marker visible locally, that says nothing about the class (hues are
random, independent of classes). Items of both groups are placed at random, interleaved, so a
local window sees a mix of both groups. A corrupted item is recognisable only from the other
items of its own group: the items of the other group show the other look-alike class.

What a query-independent block (GC, SNL, SE, the pooled-FC residual) can and cannot carry: it
gives every position the same vector ``c = sum_j a_j f(x_j)``. Pooling class features mixes both
groups: ``c`` cannot say which class belongs to which tint unless ``f`` encodes class and hue
jointly (a class x hue table, 8 classes x hue bins, hues random per scene) and the block's
bottleneck keeps it (16 channels for GC and SE here). But ``c`` can say which two classes the scene
holds, and that is worth more than the design assumed (it said "two look-alikes, so it helps
little"): in the pilot's check (``reports/controls/pilot.py``, v2's scenes,
``reports/controls/pilot_v2_classset.csv``) an item classified alone is right 43.6% of the time,
by its own group's vote 58.4%, and restricted to the scene's two true classes 72.0%. (The same
classifier's own estimate of the pair, the scene sum's top two, gives 43.6%: what a shared context
gains depends on how well it estimates the pair.) An NL/PAM block needs no table: with queries and
keys that encode the tint, ``softmax_j(q_i . k_j)`` puts query i's weight on the items of its own
group, and the values ``g(x_j)`` bring their class to i directly. So the design rewards
query-specific context but does not deny a shared context a large gain; the trained margins, not
this argument, are the evidence.

A check of how much context helps (a small 3-conv CNN trained for 3 epochs on single-item crops
of 4,000 train scenes, tested on 1,000 val scenes): with the default corruption it labels 52% of
items right, and summing its log-probabilities over the items of a ``shared`` scene gets 74% of
scenes right; without corruption, 70% and 87%.

The validation set shipped in ``demo/scenes_val/`` (300 scenes, Fashion-MNIST test items) was
written by, from the repository root::

    nlanalysis demo-data --out nlanalysis/data/demo/scenes_val --split val --num 300 --seed 0 --design shared --size 112

The other designs' 300 validation scenes ship beside it (:func:`demo_scenes_path`), and those of
``query-specific`` drawn with ``num_items=(4, 10)`` (issue 16's v2); for other drawing parameters
``nlanalysis train`` writes its 300 scenes with the same command (``--split val --num 300 --seed 0``)
to its ``OUT/data``.

Scene ``i`` (0-based) depends only on ``(seed, i)``, the design, the parameters and the source
split, so a smaller ``--num`` gives a prefix of a larger one, and runs are byte-identical.
"""
from __future__ import annotations

import colorsys
import json
import shlex
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..files import atomic_write
from .fashion_mnist import CLASS_NAMES, load_fashion_mnist

__all__ = [
    "DEMO_COMMAND", "DESIGNS", "SPLITS", "Scene", "SceneParams", "coco_categories", "demo_command", "demo_scenes_path", "make_scene",
    "scene_annotations", "semantic_mask", "write_scenes",
]  # fmt: skip

DESIGNS = ("shared", "independent", "query-specific", "query-specific-v4")
LOOKALIKES = ((0, 2, 3, 4, 6), (5, 7, 9))
"""``query-specific``: the two classes of a scene come from one of these sets (tops/dresses/coats, footwear)."""
SPLITS = {"train": "train", "val": "test"}
"""Scene split -> the Fashion-MNIST split its items come from."""

DEMO_DIR = Path(__file__).with_name("demo") / "scenes_val"
DEMO_COMMAND = (
    "nlanalysis demo-data --out nlanalysis/data/demo/scenes_val --split val --num 300 --seed 0 --design shared --size 112"
)


def _demo_dir(design: str, num_items: tuple[int, int] | None = None) -> Path:
    """The shipped validation folder of ``design``: ``scenes_val`` (shared), ``scenes_val_independent``, ...;
    with other ``num_items`` than the default, ``scenes_val_query_specific_items4_10`` etc."""
    name = DEMO_DIR.name if design == "shared" else f"scenes_val_{design.replace('-', '_')}"
    if num_items is not None and tuple(num_items) != SceneParams().num_items:
        name += f"_items{num_items[0]}_{num_items[1]}"
    return DEMO_DIR.with_name(name)


def demo_command(design: str = "shared", num_items: tuple[int, int] | None = None) -> str:
    """The command that wrote the shipped validation scenes of ``design`` (run from the repository root)."""
    return _command("val", 300, 0, design, 112, num_items).replace("DIR", f"nlanalysis/data/demo/{_demo_dir(design, num_items).name}")

FORMAT_VERSION = 1

_SUPERCATEGORY = {
    "T-shirt/top": "clothing", "Trouser": "clothing", "Pullover": "clothing", "Dress": "clothing",
    "Coat": "clothing", "Shirt": "clothing", "Sandal": "footwear", "Sneaker": "footwear",
    "Ankle boot": "footwear", "Bag": "accessory",
}


@dataclass(frozen=True)
class SceneParams:
    """How scenes are drawn. Intensities are fractions of 255; sizes in pixels; ranges inclusive.

    Attributes:
        size: canvas height = width.
        num_items: range of items per scene (fewer when no placement fits).
        item_side: range of the side an item (28 x 28) is scaled to.
        mask_threshold: scaled clean item pixels above it form the item's silhouette.
        item_floor: silhouette pixels are drawn at ``contrast * (floor + (1 - floor) * value)``.
        contrast: range of the per-item contrast.
        max_overlap: largest fraction of a new silhouette that may fall on earlier items.
        min_visible: every earlier item keeps at least this fraction of its silhouette.
        tries: placements tried per item before it is dropped.
        min_pixels: items with fewer visible pixels in the end are dropped.
        background: range of the scene's base background level.
        clutter: amplitude of smooth background noise (a coarse random grid, upsampled).
        clutter_cells: cells per side of that grid.
        pixel_noise: standard deviation of the noise over the whole scene.
        occlude_prob: probability that a flat patch (an occluder, background) hides part of an item's box.
        occlude_side: range of the patch's height and width, as fractions of the item side.
        occlude_level: range of the patch's flat gray level.
        noise_prob: probability that an item gets strong noise in its box.
        item_noise: range of the standard deviation of that noise.
    """

    size: int = 112
    num_items: tuple[int, int] = (3, 6)
    item_side: tuple[int, int] = (20, 40)
    mask_threshold: float = 0.15
    item_floor: float = 0.3
    contrast: tuple[float, float] = (0.6, 1.0)
    max_overlap: float = 0.25
    min_visible: float = 0.6
    tries: int = 30
    min_pixels: int = 8
    background: tuple[float, float] = (0.0, 0.1)
    clutter: float = 0.15
    clutter_cells: int = 8
    pixel_noise: float = 0.0
    occlude_prob: float = 0.7
    occlude_side: tuple[float, float] = (0.4, 0.7)
    occlude_level: tuple[float, float] = (0.1, 0.8)
    noise_prob: float = 0.3
    item_noise: tuple[float, float] = (0.15, 0.35)

    def __post_init__(self) -> None:
        lo, hi = self.item_side
        if not 1 <= lo <= hi <= self.size:
            small = f": a scene of {self.size} pixels is smaller than its largest item (--size at least {hi})" if 1 <= lo <= hi else ""
            raise ValueError(f"item_side {self.item_side} must satisfy 1 <= min <= max <= size ({self.size}){small}")
        if not 1 <= self.num_items[0] <= self.num_items[1]:
            raise ValueError(f"num_items {self.num_items} must satisfy 1 <= min <= max")


@dataclass
class Scene:
    """One generated scene.

    Attributes:
        image: ``uint8 [H, W, 3]`` (gray replicated to RGB).
        masks: ``bool [K, H, W]`` visible silhouettes, pairwise disjoint, in drawing order.
        labels: ``int64 [K]`` Fashion-MNIST classes ``0..9`` (COCO category id = label + 1).
        item_ids: ``int64 [K]`` indices of the items in the source arrays.
        groups: ``int64 [K]`` group (0 or 1) of each item (the ``query-specific`` designs only, else ``None``).
        hues: the two groups' tint hues in ``[0, 1)`` (the ``query-specific`` designs only).
        noise: ``float [H, W]`` the generator's standard deviation of the strong item-box noise at each pixel,
            ``sqrt(sum sigma_k^2)`` over the noisy boxes covering it (0 where none): the draws' sigma, before
            the ``query-specific`` tint scales item pixels (by 0.3-1 per channel) and before the image is
            rounded to ``uint8`` and clipped. Recorded from the draws, not written to the COCO files.
    """

    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    item_ids: np.ndarray
    groups: np.ndarray | None = None
    hues: tuple[float, float] | None = None
    noise: np.ndarray | None = None


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` weights of a triangle (bilinear) filter, widened when shrinking (antialiased)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centers = (np.arange(n_out) + 0.5) * scale - 0.5
    w = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None, :] - centers[:, None]) / support)
    return w / w.sum(1, keepdims=True)


def _resize(item: np.ndarray, side: int) -> np.ndarray:
    return _resize_matrix(item.shape[0], side) @ item @ _resize_matrix(item.shape[1], side).T


def _draw_items(rng: np.random.Generator, labels: np.ndarray, design: str, p: SceneParams) -> tuple[np.ndarray, np.ndarray]:
    """``(item indices, group of each)`` in drawing order; one group except for ``query-specific``."""
    if design == "query-specific":
        return _draw_groups(rng, labels, p)
    n = int(rng.integers(p.num_items[0], p.num_items[1] + 1))
    if design == "shared":
        pool = np.flatnonzero(labels == labels[rng.integers(len(labels))])
        return pool[rng.integers(len(pool), size=n)], np.zeros(n, np.int64)
    return rng.integers(len(labels), size=n), np.zeros(n, np.int64)


def _draw_groups(rng: np.random.Generator, labels: np.ndarray, p: SceneParams) -> tuple[np.ndarray, np.ndarray]:
    """Two groups of ``2..max(2, num_items[1] // 2)`` items, two look-alike classes, interleaved at random."""
    every = [c for family in LOOKALIKES for c in family]
    if not np.isin(every, labels).all():
        raise ValueError(f"query-specific scenes need items of classes {sorted(every)}")
    first = int(rng.choice(every))  # every look-alike class equally often
    classes = (first, int(rng.choice([c for c in next(f for f in LOOKALIKES if first in f) if c != first])))
    sizes = rng.integers(2, max(2, p.num_items[1] // 2) + 1, size=2)
    pools = [np.flatnonzero(labels == c) for c in classes]
    index = np.concatenate([pool[rng.integers(len(pool), size=k)] for pool, k in zip(pools, sizes)])
    groups = np.repeat(np.arange(2), sizes)
    order = rng.permutation(len(index))
    return index[order], groups[order]


def _tint(rng: np.random.Generator, image: np.ndarray, owner: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, tuple]:
    """RGB image: the visible pixels of group ``g``'s items scaled by the RGB of hue ``hues[g]``
    (saturation 0.7, value 1); hues at least a third of the circle apart."""
    first = float(rng.random())
    hues = (first, (first + float(rng.uniform(1 / 3, 2 / 3))) % 1.0)
    rgb = np.repeat(image[:, :, None], 3, axis=2)
    tints = np.array([colorsys.hsv_to_rgb(h, 0.7, 1.0) for h in hues])
    visible = owner >= 0
    rgb[visible] *= tints[groups[owner[visible]]]
    return rgb, hues


def _place(rng, owner, sil, areas, p: SceneParams) -> tuple[int, int] | None:
    """A top-left corner where ``sil`` overlaps little and leaves earlier items visible, or None."""
    side = sil.shape[0]
    visible = np.bincount(owner[owner >= 0], minlength=len(areas))
    for _ in range(p.tries):
        y, x = (int(v) for v in rng.integers(0, p.size - side + 1, size=2))
        under = owner[y : y + side, x : x + side][sil]
        hit = under[under >= 0]
        if hit.size > p.max_overlap * sil.sum():
            continue
        if hit.size and np.any(visible - np.bincount(hit, minlength=len(areas)) < p.min_visible * areas):
            continue
        return y, x
    return None


def make_scene(
    rng: np.random.Generator,
    items: np.ndarray,
    labels: np.ndarray,
    design: str = "shared",
    params: SceneParams | None = None,
) -> Scene:
    """Compose one scene.

    Args:
        rng: the only source of randomness (same state -> same scene).
        items: ``uint8 [N, h, w]`` Fashion-MNIST images.
        labels: ``int [N]`` their classes.
        design: ``"shared"`` (one class per scene, drawn from that class's items),
            ``"independent"`` (each item uniformly from all items), ``"query-specific"``
            (two tinted groups of two look-alike classes) or ``"query-specific-v4"`` (:mod:`.scenes_v4`).
        params: drawing parameters (default :class:`SceneParams`).
    """
    if design not in DESIGNS:
        raise ValueError(f"unknown scene design {design!r}; expected one of {DESIGNS}")
    if len(items) == 0 or len(items) != len(labels):
        raise ValueError(f"need as many labels as items (> 0), got {len(items)} items and {len(labels)} labels")
    p = params or SceneParams()
    if design == "query-specific-v4":
        from .scenes_v4 import make_scene_v4  # it composes with _compose below

        return make_scene_v4(rng, items, labels, p)
    return _compose(rng, items, labels, *_draw_items(rng, labels, design, p), p, tinted=design == "query-specific")


def _compose(rng, items, labels, drawn: np.ndarray, drawn_groups: np.ndarray, p: SceneParams, tinted: bool) -> Scene:
    """Place the drawn items (dropping those that find no place), clutter, corrupt, tint (``tinted``: by group)."""
    owner = np.full((p.size, p.size), -1, dtype=np.int64)  # index of the visible item, -1 on background
    fg = np.zeros((p.size, p.size))
    placed, areas, boxes, groups = [], np.zeros(0), [], []
    for index, group in zip(drawn, drawn_groups):
        side = int(rng.integers(p.item_side[0], p.item_side[1] + 1))
        clean = _resize(items[index] / 255.0, side)
        sil = clean > p.mask_threshold
        spot = _place(rng, owner, sil, areas, p) if sil.any() else None
        if spot is None:
            continue
        y, x = spot
        owner[y : y + side, x : x + side][sil] = len(placed)
        fg[y : y + side, x : x + side][sil] = rng.uniform(*p.contrast) * (p.item_floor + (1 - p.item_floor) * clean[sil])
        placed.append(int(index))
        groups.append(int(group))
        areas = np.append(areas, sil.sum())
        boxes.append((y, x, side))

    image = rng.uniform(*p.background) + p.clutter * _resize(rng.random((p.clutter_cells,) * 2), p.size)  # smooth clutter
    image[owner >= 0] = fg[owner >= 0]
    variance = np.zeros((p.size, p.size))  # of the strong noise at each pixel (Scene.noise)
    for y, x, side in boxes:  # per-item corruption: an occluding patch, strong noise in the box
        if rng.random() < p.occlude_prob:
            ph, pw = (max(1, round(side * f)) for f in rng.uniform(*p.occlude_side, size=2))
            py, px = y + int(rng.integers(0, side - ph + 1)), x + int(rng.integers(0, side - pw + 1))
            image[py : py + ph, px : px + pw] = rng.uniform(*p.occlude_level)
            owner[py : py + ph, px : px + pw] = -1  # the patch hides what is under it
        if rng.random() < p.noise_prob:
            sigma = rng.uniform(*p.item_noise)  # drawn before the noise itself, as always
            image[y : y + side, x : x + side] += rng.normal(0, sigma, size=(side, side))
            variance[y : y + side, x : x + side] += sigma**2
    if p.pixel_noise > 0:
        image += rng.normal(0, p.pixel_noise, size=image.shape)
    masks = owner[None] == np.arange(len(placed))[:, None, None]
    keep = masks.sum((1, 2)) >= p.min_pixels
    ids = np.asarray(placed, dtype=np.int64)[keep]
    scene = Scene(image=image, masks=masks[keep], labels=labels[ids].astype(np.int64), item_ids=ids, noise=np.sqrt(variance))
    if tinted:
        scene.image, scene.hues = _tint(rng, image, owner, np.asarray(groups, np.int64))
        scene.groups = np.asarray(groups, np.int64)[keep]
    else:
        scene.image = np.repeat(scene.image[:, :, None], 3, axis=2)
    scene.image = np.clip(np.rint(scene.image * 255), 0, 255).astype(np.uint8)
    return scene


def coco_categories() -> list[dict]:
    """COCO ``categories``: id ``label + 1``, name from :data:`CLASS_NAMES`."""
    return [{"id": i + 1, "name": name, "supercategory": _SUPERCATEGORY[name]} for i, name in enumerate(CLASS_NAMES)]


def scene_annotations(scene: Scene, image_id: int, first_id: int) -> list[dict]:
    """COCO annotations of a scene's items: RLE of the visible mask, its bbox ``[x, y, w, h]`` and area
    (and ``group``, 0 or 1, for ``query-specific`` scenes)."""
    from pycocotools import mask as mask_util

    anns = []
    for k, (mask, label) in enumerate(zip(scene.masks, scene.labels)):
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        ys, xs = np.nonzero(mask)
        anns.append({
            "id": first_id + k,
            "image_id": image_id,
            "category_id": int(label) + 1,
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
            "area": int(mask.sum()),
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "iscrowd": 0,
            **({} if scene.groups is None else {"group": int(scene.groups[k])}),
        })
    return anns


def _command(split: str, num: int, seed: int, design: str, size: int, num_items: tuple[int, int] | None = None) -> str:
    """The ``demo-data`` command that writes the set (``--num-items`` where not the default: the same scenes again)."""
    items = [] if num_items is None or tuple(num_items) == SceneParams().num_items else ["--num-items", *map(str, num_items)]
    return shlex.join(["nlanalysis", "demo-data", "--out", "DIR", "--split", split, "--num", str(num),
                       "--seed", str(seed), "--design", design, "--size", str(size), *items])


def _empty_folder(out: Path, overwrite: bool) -> tuple[Path, Path]:
    """``(out/images, out/instances.json)``, with no scene set left in them (only if ``overwrite``)."""
    image_dir, json_path = out / "images", out / "instances.json"
    if json_path.exists() or (image_dir.is_dir() and any(image_dir.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{out}: already holds a scene set; pass --overwrite (overwrite=True) or another folder")
        json_path.unlink(missing_ok=True)
        for old in image_dir.glob("*.png"):
            old.unlink()
    image_dir.mkdir(parents=True, exist_ok=True)
    return image_dir, json_path


def write_scenes(
    out_dir: str | Path,
    split: str,
    num: int,
    seed: int,
    design: str = "shared",
    size: int = 112,
    source: str | Path | None = None,
    *,
    params: SceneParams | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``num`` scenes as ``out_dir/images/NNNNNN.png`` plus ``out_dir/instances.json`` (COCO).

    Args:
        out_dir: output folder (created).
        split: ``"train"`` (items from the Fashion-MNIST train set) or ``"val"`` (its test set).
        num: number of scenes; image ids are ``1..num``.
        seed: non-negative; scene ``i`` uses ``numpy.random.default_rng([seed, i])``.
        design: one of :data:`DESIGNS`.
        size: canvas side (overrides ``params.size``).
        source: folder of the Fashion-MNIST IDX files (default: the Debian package's).
        params: other drawing parameters (default :class:`SceneParams`).
        overwrite: replace a scene set already in ``out_dir`` (else FileExistsError).

    Returns:
        Path of ``instances.json``; it is written last (atomically), so its presence marks a complete set.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown scene split {split!r}; expected one of {sorted(SPLITS)}")
    if design not in DESIGNS:
        raise ValueError(f"unknown scene design {design!r}; expected one of {DESIGNS}")
    if num < 0 or seed < 0:
        raise ValueError(f"num and seed must be non-negative, got num={num}, seed={seed}")
    params = replace(params or SceneParams(), size=size)
    items, labels = load_fashion_mnist(SPLITS[split], source)
    from PIL import Image

    first = make_scene(np.random.default_rng([seed, 0]), items, labels, design, params) if num else None  # the inputs
    image_dir, json_path = _empty_folder(Path(out_dir), overwrite)  # checked before an old set is cleared
    images, annotations = [], []
    for i in range(num):
        scene = first if i == 0 else make_scene(np.random.default_rng([seed, i]), items, labels, design, params)
        image_id = i + 1
        file_name = f"{image_id:06d}.png"
        Image.fromarray(scene.image).save(image_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": params.size, "width": params.size,
                       **({} if scene.hues is None else {"group_hues": [round(h, 6) for h in scene.hues]})})
        annotations += scene_annotations(scene, image_id, len(annotations) + 1)

    coco = {
        "info": {
            "description": f"Fashion-MNIST scenes, design {design!r} (nlanalysis.data.scenes)",
            "version": FORMAT_VERSION,
            "design": design,
            "split": split,
            "seed": seed,
            "num_scenes": num,
            "source": f"Fashion-MNIST {SPLITS[split]} set, {len(labels)} items (Xiao et al., arXiv 1708.07747)",
            "params": asdict(params),
            "command": _command(split, num, seed, design, params.size, params.num_items),
        },
        "licenses": [{"id": 1, "name": "MIT (Fashion-MNIST, Zalando SE)", "url": "https://github.com/zalandoresearch/fashion-mnist"}],
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }
    with atomic_write(json_path) as f:
        f.write(json.dumps(coco, separators=(",", ":")))
    return json_path


def semantic_mask(coco, image_id: int, shape: tuple[int, int] | None = None) -> np.ndarray:
    """``int64 [H, W]`` class map of one image: 0 = background, the category id elsewhere.

    Args:
        coco: a ``pycocotools.coco.COCO`` of a scene set.
        image_id: the image's id.
        shape: ``(H, W)``; default the image's recorded height and width.
    """
    info = coco.imgs[image_id]
    shape = tuple(shape or (info["height"], info["width"]))
    out = np.zeros(shape, dtype=np.int64)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None)):
        mask = coco.annToMask(ann).astype(bool)
        if mask.shape != shape:
            raise ValueError(f"image {image_id}: annotation {ann['id']} mask is {mask.shape}, expected {shape}")
        out[mask] = ann["category_id"]
    return out


def demo_scenes_path(design: str = "shared", num_items: tuple[int, int] | None = None) -> tuple[Path, Path]:
    """``(instances.json, image folder)`` of the 300 validation scenes of ``design`` shipped with the
    package (val split, seed 0, 112 x 112: :func:`demo_command`); ``num_items``: of the scenes drawn with
    that :attr:`SceneParams.num_items` (shipped: ``query-specific`` with ``(4, 10)``, issue 16's v2)."""
    if design not in DESIGNS:
        raise ValueError(f"unknown scene design {design!r}; expected one of {DESIGNS}")
    folder = _demo_dir(design, num_items)
    ann, images = folder / "instances.json", folder / "images"
    if not ann.is_file() or not images.is_dir():
        raise FileNotFoundError(f"{folder}: the shipped demo scenes are missing; regenerate them with `{demo_command(design, num_items)}`")
    return ann, images
