"""``nlanalysis explore`` after a review: switching site keeps the place in the image, text from the data
(file names) never runs as HTML nor stops the page, clear errors and notes when maps are missing, and
``Explorer.save`` leaves nothing behind when it fails."""
import json
import os
import re
import shutil

import numpy as np
import pytest

import nlanalysis
from extract_inputs import one_thread, write_photos
from nlanalysis.cli import main
from nlanalysis.explore.data import page_data
from nlanalysis.train.run import shipped_checkpoints
from test_explore_browser import _cell_centre, _driver, _expected, explored

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
#: file names that are HTML: an element whose handler changes the title, a comment and script opening, entities
NAMES = ("<img src=x onerror=document.title=42>.png", "<!--<script>.png", "&lt;b&gt;&amp;.png")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A run of the two-block model (query grids of 10 x 14 and 5 x 7 on the padded photo) over photos named as
    HTML, and its page."""
    root = tmp_path_factory.mktemp("explore_review")
    (root / "images").mkdir()
    photos = write_photos(root / "photos", n=3, max_side=200, ext=".png")
    for photo, name in zip((photos[0], photos[2], photos[1]), NAMES):  # NAMES[1]: the landscape photo, padded at the bottom
        photo.rename(root / "images" / name)
    return explored(root, "--ckpt", shipped_checkpoints()["embedded_gaussian_x2"], "--images", root / "images")


@pytest.fixture(scope="module")
def browser():
    driver = _driver()
    yield driver
    driver.quit()


def _open(browser, path):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(path.as_uri())
    return WebDriverWait(browser, 30).until(lambda d: d.find_element("id", "nla-app") if d.find_element("id", "nla-app").get_attribute("data-ready") else None)


def _carried(maps, block, cell, to):
    """The kept cell of site ``to`` at the centre of ``cell`` of ``block`` (model-input pixels): the cell under it,
    else the kept cell of nearest centre (the first, in the saved order, on a tie)."""
    i, j = maps.blocks.index(block), maps.blocks.index(to)
    H, W = (int(v) for v in maps["input_size"])
    (gh, gw), (th, tw) = (tuple(int(v) for v in maps[f"query_shape_{k}"]) for k in (i, j))
    y, x = (cell[0] + 0.5) * H / gh, (cell[1] + 0.5) * W / gw
    kept = maps[f"cells_{j}"][maps.kept_queries(j)]
    under = (min(th - 1, int(np.floor(y * th / H))), min(tw - 1, int(np.floor(x * tw / W))))
    if (kept == under).all(axis=1).any():
        return under
    d = ((kept[:, 0] + 0.5) * H / th - y) ** 2 + ((kept[:, 1] + 0.5) * W / tw - x) ** 2
    return tuple(int(v) for v in kept[int(np.argmin(d))])


def _cells(text):
    return [tuple(map(int, c.split(","))) for c in text.split(";")] if text else []


def test_site_switch_keeps_the_image_position(hostile, browser):
    """A query and pins chosen on the 10 x 14 grid become the 5 x 7 cells at the same place of the image (not the
    same indices), drawn with their saved maps; back on 10 x 14 they are the cells chosen there."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    run_dir, path = hostile
    run = nlanalysis.load_run(run_dir)
    app = _open(browser, path)
    index = [str(i) for i in run.maps].index(NAMES[1])
    browser.find_elements("css selector", ".nla-thumb")[index].click()
    WebDriverWait(browser, 30).until(lambda d: app.get_attribute("data-image") == NAMES[1])
    maps, canvas = run.maps[NAMES[1]], browser.find_element("id", "nla-view")
    assert [tuple(maps[f"query_shape_{i}"]) for i in (0, 1)] == [(10, 14), (5, 7)]
    assert app.get_attribute("data-site") == "layer1.1|"

    chosen = [(2, 2), (6, 9)]
    for cell in chosen:
        ActionChains(browser).move_to_element_with_offset(canvas, *_cell_centre(maps, "layer1.1", cell)).click().perform()
    assert _cells(app.get_attribute("data-pinned")) == chosen and _cells(app.get_attribute("data-query")) == [(6, 9)]

    Select(browser.find_element("id", "nla-site")).select_by_visible_text("layer2.1")
    assert app.get_attribute("data-site") == "layer2.1|"
    pins = [_carried(maps, "layer1.1", c, "layer2.1") for c in chosen]
    assert pins == [(1, 1), (3, 4)]  # the same place: not (2, 2), nor a cell (6, 9) the 5 x 7 grid does not have
    assert _cells(app.get_attribute("data-query")) == [pins[1]] and _cells(app.get_attribute("data-pinned")) == pins
    np.testing.assert_allclose(json.loads(app.get_attribute("data-map")), _expected(maps, "layer2.1", pins[1]), atol=1e-6)
    a, b = (_expected(maps, "layer2.1", c) for c in pins)  # every key of the 5 x 7 grid lies on the image (74 of 80 rows)
    (distance,) = json.loads(app.get_attribute("data-distances"))
    assert distance == pytest.approx(1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-5)

    # a query chosen on 5 x 7 whose place is on a 10 x 14 cell of padding (row 9, not kept): the nearest kept cell
    ActionChains(browser).move_to_element_with_offset(canvas, *_cell_centre(maps, "layer2.1", (4, 3))).perform()
    assert _cells(app.get_attribute("data-query")) == [(4, 3)]
    Select(browser.find_element("id", "nla-site")).select_by_visible_text("layer1.1")
    carried = _carried(maps, "layer2.1", (4, 3), "layer1.1")
    assert carried[0] == 8 and _cells(app.get_attribute("data-query")) == [carried]
    assert _cells(app.get_attribute("data-pinned")) == chosen  # the pins keep the place they were chosen at
    np.testing.assert_allclose(json.loads(app.get_attribute("data-map")), _expected(maps, "layer1.1", carried), atol=1e-6)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


@pytest.mark.parametrize("name", NAMES)
def test_file_names_stay_text(hostile, browser, tmp_path, name):
    """The page of an image named as HTML starts, runs nothing of the name, and shows the name as it is."""
    run_dir, _ = hostile
    page = nlanalysis.explore(run_dir, image_ids=[name])
    path = page.save(tmp_path / "page.html")
    script = page.html.split('<script type="application/json" id="nla-data">')[1].split("</script>")[0]
    assert not set("<>&") & set(script) and json.loads(script) == json.loads(json.dumps(page.data))  # the same data
    app = _open(browser, path)
    assert app.get_attribute("data-image") == name
    title = browser.execute_script("return document.title")
    assert title.startswith("nlanalysis explore: run: 1 images") and title != "42"
    assert browser.execute_script("return [...document.querySelectorAll('.nla-thumb figcaption')].map(f => f.firstChild.textContent)") == [name]
    assert browser.execute_script("return document.querySelectorAll('#nla-strip img').length") == 1  # the picture only
    assert browser.execute_script("return document.title") == title  # no handler of the name ran, even later
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_run_whose_images_all_failed(tmp_path, capsys):
    """A --save-maps all run of files that are not images: the error names the run and says they all failed."""
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "images" / name).write_bytes(b"not a png")
    args = ["extract", "--ckpt", str(shipped_checkpoints()["embedded_gaussian_x2"]), "--images", str(tmp_path / "images"),
            "--out", str(tmp_path / "run"), "--save-maps", "all", "--jsd-pairs", "0", "--quiet"]  # fmt: skip
    with one_thread():
        assert main(args) == 1  # every image failed
    capsys.readouterr()
    assert main(["explore", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run'}: the run saved maps (--save-maps all) but holds no image with maps: 2 of its 2 images failed" in err
    assert "run `nlanalysis extract" not in err and not (tmp_path / "run" / "explore.html").exists()


def test_lost_maps_file_is_noted(hostile, tmp_path, capsys):
    """A done image whose maps file was deleted: the page of the run (and the command) says so, naming it; asking for it
    is an error."""
    run_dir, _ = hostile
    shutil.copytree(run_dir, tmp_path / "run")
    run = nlanalysis.load_run(tmp_path / "run")
    key = run.images.set_index("image_id").loc[NAMES[0], "key"]
    (tmp_path / "run" / "maps" / f"{key}.npz").unlink()
    run = nlanalysis.load_run(tmp_path / "run")
    data = page_data(run)
    assert [im["id"] for im in data["images"]] == [i for i in sorted(NAMES) if i != NAMES[0]]
    assert f"1 done image left out, the maps file missing: {NAMES[0]} (maps/{key}.npz)" in data["notes"]
    with pytest.raises(ValueError, match="no saved maps for 1 of the 2 images asked for: ") as err:
        page_data(run, [NAMES[1], NAMES[0]])
    assert str(tmp_path / "run") in str(err.value) and f"{NAMES[0]} (maps/{key}.npz): maps file missing" in str(err.value)
    with pytest.raises(ValueError, match="nope: not among the run's images"):
        page_data(run, ["nope"])
    assert main(["explore", str(tmp_path / "run"), "--out", str(tmp_path / "page.html")]) == 0
    assert f"note: 1 done image left out, the maps file missing: {NAMES[0]}" in capsys.readouterr().out


def test_save_leaves_nothing_behind(hostile, tmp_path, monkeypatch):
    """``save`` refuses a folder, writes through a temporary file of its own beside the page, and removes it on failure."""
    run_dir, _ = hostile
    page = nlanalysis.explore(run_dir, image_ids=[NAMES[2]])
    (tmp_path / "taken").mkdir()
    with pytest.raises(IsADirectoryError, match=re.escape(f"{tmp_path / 'taken'} is a folder: give the page's file name")):
        page.save(tmp_path / "taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"] and not any((tmp_path / "taken").iterdir())

    renamed = []

    def fail(src, dst):
        renamed.append(src)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match=re.escape(f"No space left on device (writing {tmp_path / 'page.html'})")):
        page.save(tmp_path / "page.html")
    (tmp,) = renamed
    assert os.path.dirname(tmp) == str(tmp_path) and str(os.getpid()) in os.path.basename(tmp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # neither the page nor its temporary file
    monkeypatch.undo()
    assert page.save(tmp_path / "page.html").read_text(encoding="utf-8") == page.html
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html", "taken"]


def test_a_subsampled_key_grid_is_drawn_over_the_cells_it_pools(browser, tmp_path):
    """An NL block with ``sub_sample`` on an odd grid (a 72 x 72 input at stride 8: 9 x 9 queries, 4 x 4 keys over the
    first 8 x 8 cells): the page lays the keys where the figures do (``grid_overlay`` with ``key_cover``), not stretched
    over the whole input; the uncovered last row and column are not drawn."""
    import torch
    from torch import nn

    from nlanalysis.checkpoints import Preprocess, save_checkpoint
    from nlanalysis.extract.maps import grid_overlay, key_cover
    from nlanalysis.models import BlockSpec, ResNetArch, build_model

    torch.manual_seed(0)
    arch = ResNetArch((1, 1), [BlockSpec("layer2.0.nonlocal_block", "NonLocal2d", 512, "after_conv3",
                                         {"mode": "embedded_gaussian", "sub_sample": True})], prefix="backbone.")  # fmt: skip
    model = build_model(arch).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.fill_(1.0)
    ckpt = save_checkpoint(tmp_path / "sub.pth", model, Preprocess(scale=(72, 72), keep_ratio=False, pad_divisor=0))
    photos = write_photos(tmp_path / "images", n=1, max_side=100)
    explored(tmp_path, "--ckpt", ckpt, "--images", photos[0], "--query-dependence", "off")
    run = nlanalysis.load_run(tmp_path / "run")
    maps = next(iter(run.maps.values()))
    assert (tuple(maps["query_shape_0"]), tuple(maps["key_shape_0"]), tuple(maps["input_size"])) == ((9, 9), (4, 4), (72, 72))
    app = _open(browser, tmp_path / "page.html")
    got = browser.execute_script("return window.nlaExplore.overlay()")
    values = np.array(got["values"], dtype=np.float64).reshape(got["height"], got["width"])
    cell = tuple(map(int, app.get_attribute("data-query").split(",")))
    grid = np.asarray(_expected(maps, "backbone.layer2.0.nonlocal_block", cell), dtype=np.float32).reshape(4, 4)
    (oh, ow), (h, w) = maps["original_size"], values.shape
    expected = grid_overlay(grid, (72, 72), tuple(maps["size"]), maps.offset, (h, w), (maps["scale"][0] * oh / h, maps["scale"][1] * ow / w),
                            key_cover((9, 9), (4, 4)))  # fmt: skip
    np.testing.assert_array_equal(np.isnan(values), np.isnan(expected))
    assert np.isnan(values).any() and not np.isnan(values).all()  # the last row and column of cells: no key there
    assert np.nanmax(np.abs(values - expected)) < 1e-4 * np.nanmax(np.abs(expected))
