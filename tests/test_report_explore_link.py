"""``nlanalysis report`` on ``--save-maps all`` runs: the index links the explore page (which exists),
says what to run where a run has no such page, and Figure 2 draws the few points a normal run chooses."""
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

import nlanalysis
from extract_inputs import one_thread
from nlanalysis.cli import main
from nlanalysis.data.scenes import demo_scenes_path
from nlanalysis.plots import plot_query_maps
from nlanalysis.plots.query_maps import MAX_DRAWN_QUERIES
from nlanalysis.report import write_report
from nlanalysis.report.drawn_queries import FIXED_POINTS, QueryPicker
from nlanalysis.train.run import shipped_checkpoints

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The shipped two-block model on 2 demo scenes: every query saved, the chosen ``objects:2``, no maps."""
    ann, images = demo_scenes_path()
    root = tmp_path_factory.mktemp("explore_link")
    common = ["extract", "--ckpt", str(shipped_checkpoints()["embedded_gaussian_x2"]), "--coco-ann", str(ann),
              "--coco-images", str(images), "--limit", "2", "--jsd-pairs", "0", "--quiet"]  # fmt: skip
    kinds = {"all": ["--save-maps", "all"], "chosen": ["--save-maps", "--queries", "objects:2"], "none": []}
    with one_thread():
        for name, extra in kinds.items():
            assert main([*common, "--out", str(root / name), *extra]) == 0
    return {name: root / name for name in kinds}


@pytest.fixture(scope="module")
def cli_report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "rep"
    labels = [f"--label={name}={path}" for name, path in runs.items()]
    assert main(["report", *labels, "--out", str(out), "--formats", "png", "--images", "2"]) == 0
    return out


def _links(text: str, pattern: str) -> list[str]:
    return [m for m in re.findall(pattern, text) if m.startswith("explore/")]


def test_the_index_links_the_explore_page_and_the_file_exists(cli_report, runs):
    md = (cli_report / "index.md").read_text()
    page_html = (cli_report / "index.html").read_text()
    md_links, html_links = _links(md, r"\]\(([^)\s]+)\)"), _links(page_html, r'href="([^"]+)"')
    assert md_links == ["explore/all.html"] and html_links == ["explore/all.html"]
    page = cli_report / md_links[0]
    assert page.is_file() and sorted(p.name for p in (cli_report / "explore").iterdir()) == ["all.html"]
    text = page.read_text()
    assert "<script" in text and "DecompressionStream" in text  # the viewer, inline
    assert not re.search(r"""(src|href)=["']https?://""", text)  # nothing fetched from the network
    # the page shows the run's maps: every image of the run is in it
    n_images = len(nlanalysis.load_run(runs["all"]).maps)
    assert f"{n_images} images" in md


def test_runs_without_every_query_get_a_note_with_the_command(cli_report):
    md = (cli_report / "index.md").read_text()
    explore = md.split("## Explore every query", 1)[1].split("\n## ", 1)[0]
    chosen = next(line for line in explore.splitlines() if "`chosen`" in line)
    none = next(line for line in explore.splitlines() if "`none`" in line)
    assert "--save-maps all" in chosen and "nlanalysis explore" in chosen and "chosen queries only" in chosen
    assert "saved no maps" in none and "--save-maps all" in none


def test_the_python_api_without_a_page_writer_gives_the_command(runs, tmp_path):
    report = write_report([], tmp_path / "rep", labels={"all": runs["all"]}, formats=("png",), images=1)
    md = report.index_md.read_text()
    assert report.pages == [] and not (tmp_path / "rep" / "explore").exists()
    assert f"nlanalysis explore {runs['all']} --out {tmp_path / 'rep' / 'explore' / 'all.html'}" in md


def test_a_new_report_replaces_the_old_pages(runs, cli_report, tmp_path):
    out = tmp_path / "rep"
    assert main(["report", f"--label=first={runs['all']}", "--out", str(out), "--formats", "png", "--images", "1"]) == 0
    assert main(["report", f"--label=second={runs['all']}", "--out", str(out), "--formats", "png", "--images", "1"]) == 0
    assert sorted(p.name for p in (out / "explore").iterdir()) == ["second.html"]


def test_figure2_of_an_all_maps_run_draws_the_points_a_normal_run_chooses(runs):
    """Each picked query lies in the cell of every block that holds the point ``--queries objects:2``
    chose (read from the normal run's own saved cells), with the same object label, and its maps
    equal the normal run's maps of that point within the 8-bit quantisation."""
    every, chosen = nlanalysis.load_run(runs["all"]), nlanalysis.load_run(runs["chosen"])
    picker = QueryPicker(every)
    assert "objects" in picker.rule
    for image_id in chosen.maps:
        normal, full = chosen.maps[image_id], every.maps[image_id]
        pick = picker(full)
        assert list(pick.labels) == normal.query_label.tolist() and len(pick.indices) == 3  # 2 objects + background
        for i, block in enumerate(normal.blocks):
            assert np.array_equal(full[f"cells_{i}"][list(pick.indices)], normal[f"cells_{i}"])
            got, want = full.maps(block)[list(pick.indices)], normal.maps(block)
            step = full[f"qscale_{i}"].max() / 510
            np.testing.assert_allclose(got, want, atol=step + 2e-3 * want.max())


def test_without_annotations_the_fixed_points_are_drawn(runs, tmp_path):
    every = nlanalysis.load_run(runs["all"])
    every.info["selection_args"] = {**every.info["selection_args"], "coco_ann": str(tmp_path / "gone.json")}
    picker = QueryPicker(every)
    assert "fixed points" in picker.rule
    maps = every.maps[next(iter(every.maps))]
    pick = picker(maps)
    h, w = (int(v) for v in maps["size"])
    yx = maps.query_yx[list(pick.indices)]
    for (fy, fx), (y, x) in zip(FIXED_POINTS, yx):  # the saved query in the cell of each point (14 x 14 grid: 8 px)
        assert abs(y - fy * h) <= 4 and abs(x - fx * w) <= 4
    assert list(pick.labels) == [-1, -1, -1]


def test_figure2_refuses_to_draw_every_saved_query_and_draws_the_chosen(runs):
    every = nlanalysis.load_run(runs["all"])
    maps = [every.maps[i] for i in every.maps]
    assert len(maps[0].query_yx) > MAX_DRAWN_QUERIES
    with pytest.raises(ValueError, match="too many to draw"):
        plot_query_maps(maps, "layer1.1")
    picker = QueryPicker(every)
    fig = plot_query_maps(maps, "layer1.1", chosen=[picker(m) for m in maps])
    titled = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("q")]
    assert len(titled) == 3 * len(maps) and titled[:3] == ["q1 · object " + str(picker(maps[0]).labels[0]),
                                                            "q2 · object " + str(picker(maps[0]).labels[1]), "q3 · background"]


def test_the_report_of_an_all_maps_run_draws_three_queries_per_image(cli_report):
    md = (cli_report / "index.md").read_text()
    assert "the run saved every query; drawn: the deepest points of the 2 largest objects" in md
    assert Path(cli_report / "figures" / "query_maps_all_layer1.1.png").is_file()


def test_the_reports_page_of_a_large_run_holds_its_first_images_and_says_so(runs, tmp_path, monkeypatch):
    """A report's page holds every query's map of each image it shows (~2 MB an image and block at COCO scale): of a
    run larger than ``PAGE_IMAGES`` it shows the first ones, and the index says how to page the others."""
    import json as json_

    import nlanalysis.report.explore_links as links
    from nlanalysis.cli.report import explore_page_writer

    monkeypatch.setattr(links, "PAGE_IMAGES", 1)
    run = nlanalysis.load_run(runs["all"])
    assert len(run.maps) == 2
    report = write_report([], tmp_path / "rep", labels={"all": runs["all"]}, formats=("png",), images=1,
                          explore=explore_page_writer(None))  # fmt: skip
    (page,) = report.pages
    data = json_.loads(re.search(r'<script type="application/json" id="nla-data">(.*?)</script>', page.read_text(), re.S).group(1))
    assert [im["id"] for im in data["images"]] == [str(list(run.maps)[0])]
    assert f"1 images (the first 1 of its 2; `nlanalysis explore {runs['all']} --image-ids ...` pages others)" in report.index_md.read_text()
