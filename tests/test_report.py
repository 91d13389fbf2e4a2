"""``nlanalysis report``: real result sets in, tables, figures and an honest text out."""
import json
import math
import shutil

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from extract_inputs import tiny_checkpoint, write_coco, write_photos
import nlanalysis
from nlanalysis.checkpoints import load_checkpoint, save_checkpoint
from nlanalysis.cli import main
from nlanalysis.report import describe_run, find_image, load_runs, summary_text, write_report
from nlanalysis.plots.table import plot_table
from nlanalysis.tables import format_table, summarise

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

NL = "backbone.layer2.0.nonlocal_block"


def _sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _as_snapshot(run, ckpt, out, meta):
    """A copy of ``run`` whose checkpoint is ``ckpt`` re-saved with ``meta`` (as training writes it)."""
    loaded = load_checkpoint(ckpt)
    path = save_checkpoint(out.with_suffix(".pth"), loaded.model, loaded.preprocess, meta)
    shutil.copytree(run, out)
    info = json.loads((out / "run.json").read_text())
    info["checkpoint"].update(path=str(path.resolve()), sha256=_sha256(path))
    (out / "run.json").write_text(json.dumps(info))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    photos = write_photos(root / "images", n=2, max_side=120)
    write_coco(root / "ann.json", photos)
    ckpt = tiny_checkpoint(root / "tiny.pth")
    base = root / "tiny_run"
    args = ["extract", "--ckpt", str(ckpt), "--coco-ann", str(root / "ann.json"), "--coco-images", str(root / "images"),
            "--out", str(base), "--save-maps", "--jsd-pairs", "32", "--quiet", "--query-dependence", "off"]  # fmt: skip  (the headline report)
    assert main(args) == 0
    snaps = []
    for seed in (0, 1):
        for step in (0, 10):
            meta = {"variant": "nl", "train_config": {"seed": seed}, "step": step, "total_steps": 10, "miou": 0.1 * step + seed / 100}
            snaps.append(_as_snapshot(base, ckpt, root / f"nl_s{seed}_step{step}", meta))
    return root, base, snaps


def test_labels_come_from_the_checkpoint_meta(runs):
    root, base, snaps = runs
    meta = describe_run(nlanalysis.load_run(snaps[3]))
    assert (meta.label, meta.variant, meta.seed, meta.step, meta.metric_name, meta.metric) == ("nl_s1_step10", "nl", 1, 10, "miou", 1.01)
    assert meta.source == "checkpoint meta"
    bare = describe_run(nlanalysis.load_run(base))  # an untrained checkpoint without meta
    assert (bare.label, bare.variant, bare.seed, bare.step, bare.metric) == ("tiny", "tiny", None, None, None)
    gone = root / "gone_run"
    shutil.copytree(base, gone)
    info = json.loads((gone / "run.json").read_text())
    info["checkpoint"]["path"] = str(root / "deleted.pth")
    (gone / "run.json").write_text(json.dumps(info))
    lost = describe_run(nlanalysis.load_run(gone), "mine")
    assert lost.variant == "mine" and lost.source.startswith("none") and "deleted.pth" in lost.source


def test_extract_keeps_the_checkpoints_facts_so_the_labels_outlive_the_file(runs, tmp_path):
    """run.json records the checkpoint meta's facts (variant, seed, step, metric; not an mmdetection config text or a
    tensor): a report reads them after the checkpoint is deleted or retrained."""
    root, base, _ = runs
    loaded = load_checkpoint(root / "tiny.pth")
    meta = {"variant": "nl", "train_config": {"seed": 2}, "step": 7, "miou": 0.25, "config": "model = dict(...)",
            "CLASSES": torch.arange(3)}  # fmt: skip
    ckpt = save_checkpoint(tmp_path / "nl_s2.pth", loaded.model, loaded.preprocess, meta)
    out = tmp_path / "run"
    args = ["extract", "--ckpt", str(ckpt), "--coco-ann", str(root / "ann.json"), "--coco-images", str(root / "images"),
            "--out", str(out), "--jsd-pairs", "0", "--quiet", "--query-dependence", "off", "--limit", "1"]  # fmt: skip
    assert main(args) == 0
    facts = json.loads((out / "run.json").read_text())["checkpoint"]["meta"]
    assert facts == {"variant": "nl", "train_config": {"seed": 2}, "step": 7, "miou": 0.25}
    ckpt.unlink()
    meta = describe_run(nlanalysis.load_run(out))
    assert (meta.variant, meta.seed, meta.step, meta.metric_name, meta.metric, meta.source) == ("nl", 2, 7, "miou", 0.25, "run.json")


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    _, _, snaps = runs
    return write_report(snaps, tmp_path_factory.mktemp("rep") / "a", images=2)


def test_report_of_snapshots_over_seeds(runs, report):
    root, base, snaps = runs
    out = report.out
    t1 = report.tables["table1"]
    assert list(t1["step"]) == [10, 10] and list(t1["seeds"]) == [2, 2] and list(t1["block"])[1] == NL
    # the table's numbers are the metrics they summarise (two identical seeds: the image mean)
    metrics = nlanalysis.load_run(base).metrics
    nl = metrics[metrics.block == NL]
    assert t1.loc[1, "att"] == pytest.approx(nl["att"].mean()) and t1.loc[1, "input"] == pytest.approx(nl["input"].mean())
    assert t1.loc[1, "metric"] == pytest.approx(1.005)
    assert list(report.tables["over_training"]["step"]) == [0, 0, 10, 10]
    runs_csv = pd.read_csv(out / "tables/runs.csv")
    assert list(runs_csv["label"]) == ["nl_s0_step0", "nl_s0_step10", "nl_s1_step0", "nl_s1_step10"]
    names = sorted(p.name for p in report.figures)
    assert names == ["diagnostics.png", "distributions_att.png", "distributions_input.png", "distributions_output.png", "over_training.png", "query_distances_nl_s0_step10.png",
                     "query_maps_nl_s0_step10_backbone.layer1.0.context_block.png", f"query_maps_nl_s0_step10_{NL}.png",
                     "table1.png"]  # fmt: skip
    # Table 1 as a figure: its cells are the rows of tables/table1.md (the same table, drawn)
    md_rows = [[c.strip() for c in line.strip("|").split("|")] for line in (out / "tables/table1.md").read_text().splitlines()
               if line.startswith("| ") and "---" not in line]  # fmt: skip
    cells = plot_table(format_table(t1)).axes[0].tables[0].get_celld()
    drawn = [[cells[r, c].get_text().get_text().replace("\n", " ") for c in range(len(md_rows[0]))] for r in range(1, len(md_rows))]
    assert drawn == md_rows[1:] and len(drawn) == 2 and (out / "figures/table1.pdf").is_file()
    for png in report.figures:
        assert png.with_suffix(".pdf").stat().st_size > 1000
        with Image.open(png) as img:
            assert min(img.size) > 200 and np.asarray(img.convert("L")).std() > 5
    md = report.index_md.read_text()
    for link in ["tables/table1.csv", "tables/table1.tex", "figures/over_training.png", "figures/distributions_att.pdf"]:
        assert f"({link})" in md and (out / link).is_file()
    assert "1 − cos" in md and "i = j included" in md and "| nl | 10 |" in md
    html = report.index_html.read_text()
    assert html.count("<img ") == 9 and "<table>" in html and 'href="figures/distributions_att.pdf"' in html


def test_the_same_runs_give_the_same_files(runs, report, tmp_path):
    _, _, snaps = runs
    again = write_report(snaps, tmp_path / "b", images=2, formats=("png",))
    assert again.text == report.text
    for path in sorted(tmp_path.joinpath("b").rglob("*.*")):
        if path.name.startswith("index") or path.name == ".nlanalysis-report.json":
            continue  # they differ in the PDF links, the list of files written in the PDFs, only
        assert path.read_bytes() == (report.out / path.relative_to(tmp_path / "b")).read_bytes(), path
    assert "pdf" not in again.index_md.read_text().lower().replace("tables/", "")


def test_cli_labels_blocks_and_moved_images(runs, tmp_path, capsys):
    root, base, _ = runs
    moved = tmp_path / "moved_run"
    shutil.copytree(base, moved)
    info = json.loads((moved / "run.json").read_text())
    info["selection_args"]["coco_images"] = str(tmp_path / "not_here")
    (moved / "run.json").write_text(json.dumps(info))
    out = tmp_path / "r"
    assert main(["report", "--label", f"mine={moved}", "--blocks", "*nonlocal*", "--out", str(out), "--formats", "png", "--images", "1"]) == 0
    printed = capsys.readouterr().out
    assert "image file(s) of 1 not found" in printed and "--image-root" in printed
    t1 = pd.read_csv(out / "tables/table1.csv")
    assert list(t1["variant"]) == ["mine"] and list(t1["block"]) == [NL] and "step" not in t1
    assert not list(out.glob("figures/*.pdf")) and len(list(out.glob("figures/*.png"))) == 7  # with table1.png, diagnostics.png, 3 distributions
    res = nlanalysis.load_run(moved)
    assert find_image(res, 1) is None and find_image(res, 1, root / "images") == root / "images/photo_000.jpg"
    assert find_image(nlanalysis.load_run(base), 2) == root / "images/photo_001.jpg"
    assert main(["report", "--out", str(out)]) == 2
    assert "at least one RUN_DIR" in capsys.readouterr().err
    assert main(["report", str(base), "--out", str(out), "--blocks", "nothing*"]) == 2


def test_text_states_the_numbers_and_says_when_att_is_not_far_below_input():
    frame = pd.DataFrame(
        [{"label": v, "variant": v, "block": "b", "mode": m, "image_id": i, "input": 0.4, "output": o, "att": a,
          "att_jsd": 0.01, "att_entropy": 0.9, "query_independent": m == "gc", "convention": "1-cos"}
         for v, m, a, o in [("close", "embedded_gaussian", 0.1, 0.08), ("far", "dot_product", 0.008, 0.004), ("gc", "gc", 0.0, 0.0)]
         for i in range(3)]  # fmt: skip
    ).assign(ctrl_att=lambda f: np.where(f["variant"] == "close", 0.4, np.nan))
    lines = summary_text(summarise(frame, by=("variant",)))
    assert lines[0].startswith("Of 2 block(s) whose maps can depend on the query, 1 has `att` at least ten times below `input`")
    assert "1 − cos" in lines[0] and "i = j included" in lines[0]
    close, far, gc = lines[1:]
    # every image alike: intervals of zero width, whose ends print as the point does
    assert "`att` 0.100" in close and "only 4.0× below `input` (the same at the intervals' ends): **not** the one to two" in close
    assert "Random query/key projections" in close and "differ between queries 0.25× as much as those" in close
    assert "`att` is 50× below `input` (the same at the intervals' ends): one to two orders of magnitude, as GCNet found" in far
    assert "Random" not in far
    assert "by construction" in gc and "`att` 0" in gc


def _summary_row(variant: str, att: float, att_low: float = math.nan, att_high: float = math.nan, **extra) -> dict:
    """A Table 1 row (as :func:`summarise` writes it) with ``input`` 0.6 [0.5, 0.7] where ``att`` has an interval."""
    ends = {} if math.isnan(att_low) else {"input_low": 0.5, "input_high": 0.7}
    return {"variant": variant, "block": "b", "mode": "embedded_gaussian", "images": 30, "query_independent": False,
            "input": 0.6, **ends, "att": att, "att_low": att_low, "att_high": att_high, "att_entropy": 0.5, **extra}  # fmt: skip


def test_the_ten_fold_verdict_follows_the_intervals_ends():
    """input / att with input 0.6 [0.5, 0.7]: the point, the conservative end input_low / att_high and the
    liberal end input_high / att_low, by hand; 10x is claimed only where the conservative end reaches it."""
    rows = [
        _summary_row("clear", 0.02, 0.015, 0.025),  # 30x; 0.5 / 0.025 = 20, 0.7 / 0.015 = 46.7
        _summary_row("open", 0.055, 0.045, 0.065),  # 10.9x; 0.5 / 0.065 = 7.69, 0.7 / 0.045 = 15.6
        _summary_row("not", 0.2, 0.15, 0.25),  # 3.0x; 0.5 / 0.25 = 2.0, 0.7 / 0.15 = 4.67
        _summary_row("bare", 0.03, images=1),  # one image: 0.6 / 0.03 = 20x, no interval
        _summary_row("gc", 0.0, 0.0, 0.0, mode="gc", query_independent=True),
    ]
    lines = summary_text(pd.DataFrame(rows))
    head, clear, open_, not_, bare, gc = lines
    assert head.startswith(
        "Of 4 block(s) whose maps can depend on the query, 2 have `att` at least ten times below `input` (GCNet's "
        "qualitative finding on trained COCO models) even at the intervals' conservative end (input low / att high); "
        "1 does not, even at their liberal end (input high / att low); for 1 block (`open` `b`) the intervals do not "
        "decide whether it is 10×; 1 block without an interval (one image or seed: `bare` `b`) counted by the point estimate. "
        "Distances:")  # fmt: skip
    assert "`att` is 30× below `input` (20–47× at the intervals' ends): one to two orders of magnitude, as GCNet found" in clear
    assert ("`att` is 11× below `input` (7.7–16× at the intervals' ends): the intervals do not decide whether it is 10× "
            "(GCNet's one to two orders of magnitude)") in open_  # fmt: skip
    assert "`att` is only 3.0× below `input` (2.0–4.7× at the intervals' ends): **not** the one to two orders" in not_
    assert "`att` is 20× below `input` (point estimate; no interval available): one to two orders of magnitude" in bare
    assert "by construction" in gc


def test_the_hundred_and_thousand_fold_tiers_follow_the_conservative_end():
    rows = [
        _summary_row("t100", 0.004, 0.003, 0.0045),  # 150x; 0.5 / 0.0045 = 111, 0.7 / 0.003 = 233
        _summary_row("t10", 0.008, 0.006, 0.01),  # 75x; 0.5 / 0.01 = 50, 0.7 / 0.006 = 117: 100x undecided
        _summary_row("t1000", 0.0001, 0.00005, 0.0002),  # 6000x; 0.5 / 0.0002 = 2500
        _summary_row("t1000open", 0.0005, 0.0001, 0.001),  # 1200x; 0.5 / 0.001 = 500, 0.7 / 0.0001 = 7000
    ]
    _, t100, t10, t1000, t1000open = summary_text(pd.DataFrame(rows))
    assert "`att` is 150× below `input` (111–233× at the intervals' ends): more than two orders of magnitude;" in t100
    assert ("`att` is 75× below `input` (50–117× at the intervals' ends): at least one order of magnitude, as GCNet found; "
            "the intervals do not decide whether it is 100×") in t10  # fmt: skip
    assert "`att` is more than 1000× below `input` (practically 0; at the intervals' ends too)" in t1000
    assert ("`att` is 1200× below `input` (500–7000× at the intervals' ends): more than two orders of magnitude; the "
            "intervals do not decide whether it is 1000×") in t1000open  # fmt: skip


def test_a_ratio_just_below_a_tier_never_prints_as_the_tier_and_unmeasured_rows_are_not_counted():
    from nlanalysis.report.ratio_ends import ratio_ends

    edge = {"variant": "edge", "block": "b", "mode": "embedded_gaussian", "images": 30, "query_independent": False,
            "input": 0.598, "input_low": 0.597, "input_high": 0.599, "att": 0.06, "att_low": 0.06, "att_high": 0.0601,
            "att_entropy": 0.5}  # fmt: skip
    rows = [edge, _summary_row("clear", 0.02, 0.015, 0.025), _summary_row("gone", math.nan)]
    head, edge_text, _, gone = summary_text(pd.DataFrame(rows))
    # 0.598 / 0.06 = 9.9667 (cut: 9.96, not "10.0"); 0.597 / 0.0601 = 9.933 -> 9.9; 0.599 / 0.06 = 9.9833 (cut: 9.98)
    assert "`att` is only 9.96× below `input` (9.9–9.98× at the intervals' ends): **not**" in edge_text
    assert head.startswith("Of 2 block(s) whose maps can depend on the query, 1 has `att` at least ten times below")
    assert "1 does not, even at their liberal end" in head
    assert "; 1 block without a finite `input` and `att` (`gone` `b`) not counted" in head
    assert "cannot be compared with `input` (not available)" in gone and "nearly uniform" not in gone
    # 0 / 0 at an end allows anything: 0 for the conservative end, unbounded for the liberal one (not "no interval")
    ends = ratio_ends({"input": 0.2, "input_low": 0.0, "input_high": 0.4, "att": 0.0, "att_low": 0.0, "att_high": 0.0})
    assert ends.interval and ends.low == 0 and ends.high == math.inf and ends.reaches(10) is None


def test_output_about_as_large_or_larger_than_input_states_the_inverse_ends():
    rows = [_summary_row("same", 0.2, 0.15, 0.25, output=0.6, output_low=0.55, output_high=0.65),
            _summary_row("larger", 0.2, 0.15, 0.25, output=1.2, output_low=1.1, output_high=1.3)]  # fmt: skip
    _, same, larger = summary_text(pd.DataFrame(rows))
    # output / input: 0.55 / 0.7 = 0.79 and 0.65 / 0.5 = 1.30; 1.1 / 0.7 = 1.6 and 1.3 / 0.5 = 2.6
    assert "`output` is about as large as `input` (1.00×; 0.79–1.30× at the intervals' ends): **not**" in same
    assert "`output` is 2.0× **larger** than `input` (1.6–2.6× at the intervals' ends): **not**" in larger


def test_load_runs_rejects_duplicate_labels_and_unknown_blocks(runs):
    root, base, snaps = runs
    loaded = load_runs([base, snaps[0]], blocks="*context*")
    assert set(loaded.frame["block"]) == {"backbone.layer1.0.context_block"}
    assert list(loaded.table()["variant"]) == ["tiny", "nl"]
    with pytest.raises(ValueError, match="no metrics rows with blocks"):
        load_runs([base], blocks="nothing")
    assert len(load_runs([base, base]).results) == 1  # the same folder twice is one run
    clash = load_runs([snaps[0], base], labels={"tiny": snaps[1]})  # a given label wins over a default one
    assert [m.label for m in clash.meta] == ["nl_s0_step0", "tiny (tiny_run)", "tiny"]
    assert [m.label for m in load_runs([base, root / "nl_s0_step0"], labels={"a": base}).meta] == ["a", "nl_s0_step0"]


def test_report_of_a_vit_run(tmp_path):
    """A ViT run (a small random-weight timm ViT, 56 x 56) reports one row per layer (the head mean) and the
    layers x heads figures, as ``vit-report`` does."""
    from helpers import randomize_
    from nlanalysis.vit import HEAD_MEAN

    timm_vit = pytest.importorskip("timm.models.vision_transformer", reason="a ViT run needs timm: pip install 'nlanalysis[vit]'")
    photos = write_photos(tmp_path / "images", n=2, max_side=120)
    write_coco(tmp_path / "ann.json", photos)
    model = randomize_(timm_vit.VisionTransformer(img_size=56, patch_size=14, embed_dim=128, depth=2, num_heads=2, num_classes=0,
                                                  init_values=0.5), std=0.3).eval()  # fmt: skip
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    args = ["extract", "--ckpt", str(tmp_path / "vit.pth"), "--vit-heads", "2", "--vit-size", "56", "--coco-ann", str(tmp_path / "ann.json"),
            "--coco-images", str(tmp_path / "images"), "--out", str(tmp_path / "vit_run"), "--save-maps", "--jsd-pairs", "16",
            "--quiet", "--query-dependence", "off"]  # fmt: skip  (the headline report)
    assert main(args) == 0
    metrics = nlanalysis.load_run(tmp_path / "vit_run").metrics
    assert set(metrics["head"]) == {HEAD_MEAN, 0, 1}
    runs = load_runs([tmp_path / "vit_run"])
    assert len(runs.frame) == 2 * 2 and (runs.frame["head"] == HEAD_MEAN).all()  # images x layers, head-mean rows only
    report = write_report([tmp_path / "vit_run"], tmp_path / "rep", formats=("png",))  # the ViT report, per layer and head
    layers = report.tables["layers"]
    assert list(layers["layer"]) == [0, 1] and (layers["n_images"] == 2).all()
    means = metrics[metrics["head"] == HEAD_MEAN].groupby("layer")["att"].mean()
    per_head = metrics[metrics["head"] != HEAD_MEAN].groupby("layer")["att"].mean()
    assert np.allclose(layers["att"], means[layers["layer"]]) and not np.allclose(layers["att"], per_head[layers["layer"]])
    names = sorted(p.name for p in report.figures)
    assert names == ["head_maps.png", "heads_att.png", "heads_att_entropy.png", "heads_att_local.png"]  # Figure 2 from saved maps
    assert "2 photos given by the caller" in report.index_md.read_text()
    shutil.copytree(tmp_path / "vit_run", tmp_path / "vit_copy")
    with pytest.raises(ValueError, match="a ViT run is reported alone"):
        write_report([tmp_path / "vit_run", tmp_path / "vit_copy"], tmp_path / "rep2", formats=("png",))
    with pytest.raises(ValueError, match="a ViT run is reported alone"):  # one given by --label only counts too
        write_report([tmp_path / "vit_run"], tmp_path / "rep2", labels={"copy": tmp_path / "vit_copy"}, formats=("png",))
    # given twice, or only by --label: the one run's ViT report (a --label-only ViT run was reported as NL runs)
    for runs, labels in (([tmp_path / "vit_run", tmp_path / "vit_run"], None), ([], {"V": tmp_path / "vit_run"})):
        again = write_report(runs, tmp_path / "rep3", labels=labels, formats=("png",))
        assert "layers" in again.tables and "table1" not in again.tables


def test_report_of_a_vit_run_shows_its_object_lifts_over_their_locality_control(tmp_path):
    """A ViT run on photos with object labels, extracted with the suite and ``--locality-control``: the per-layer query
    table has the head-mean maps' lifts and each lift's ratio to its control, as geometric means over photos with the
    t-interval of the mean log (scipy, from metrics.csv); the per-head table has them too."""
    from scipy import stats as scipy_stats

    from helpers import randomize_
    from nlanalysis.vit import HEAD_MEAN

    timm_vit = pytest.importorskip("timm.models.vision_transformer", reason="a ViT run needs timm: pip install 'nlanalysis[vit]'")
    photos = write_photos(tmp_path / "images", n=3, max_side=120)
    write_coco(tmp_path / "ann.json", photos)
    model = randomize_(timm_vit.VisionTransformer(img_size=56, patch_size=7, embed_dim=32, depth=2, num_heads=2, num_classes=0),
                       std=0.6).eval()  # fmt: skip
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    assert main(["extract", "--ckpt", str(tmp_path / "vit.pth"), "--vit-heads", "2", "--vit-size", "56", "--coco-ann", str(tmp_path / "ann.json"),
                 "--coco-images", str(tmp_path / "images"), "--out", str(tmp_path / "run"), "--jsd-pairs", "0", "--quiet",
                 "--query-dependence", "cheap", "--locality-control"]) == 0  # fmt: skip
    metrics = nlanalysis.load_run(tmp_path / "run").metrics
    report = write_report([tmp_path / "run"], tmp_path / "rep", formats=("png",))
    table = report.tables["query_layers"].set_index("layer")
    heads = report.tables["heads"]
    checked = 0
    for layer in (0, 1):
        rows = metrics[(metrics["layer"] == layer) & (metrics["head"] == HEAD_MEAN)]
        ratio = rows["own_object_lift_objects"] / rows["ctrl_local_own_object_lift_objects"]
        for name, values in (("own_object_lift_objects", rows["own_object_lift_objects"]), ("own_object_lift_objects_vs_local", ratio)):
            logs = np.log(values[np.isfinite(values) & (values > 0)].to_numpy(float))
            assert len(logs) >= 2, name  # two photos with objects: an interval
            low, high = scipy_stats.t.interval(0.95, len(logs) - 1, loc=logs.mean(), scale=scipy_stats.sem(logs))
            want = (np.exp(logs.mean()), np.exp(low), np.exp(high))
            got = table.loc[layer, [name, f"{name}_low", f"{name}_high"]].to_numpy(float)
            np.testing.assert_allclose(got, want, rtol=1e-9, err_msg=f"{name}, layer {layer}")
            mean_row = heads[(heads["layer"] == layer) & (heads["head"] == HEAD_MEAN)].iloc[0]
            assert mean_row[name] == pytest.approx(want[0], rel=1e-9)
            checked += 1
    assert checked == 4
    assert "locality control" in report.index_md.read_text()


def test_an_image_of_one_checkpoint_in_two_runs_is_counted_once_and_said(runs, tmp_path):
    """A copied folder (or a shard beside its whole run, or the same model extracted again to save its maps) holds the
    same images of the same variant, seed and step: pooled, they narrowed every interval as if there were twice the
    images. The first run's rows count; the note says which were left out. Snapshots of one seed (other steps) are fine."""
    root, _, snaps = runs
    copy = tmp_path / "copy"
    shutil.copytree(snaps[0], copy)
    alone, both = load_runs([snaps[0]]), load_runs([snaps[0], copy])
    pd.testing.assert_frame_equal(both.frame.drop(columns="label"), alone.frame.drop(columns="label"))
    assert both.notes == [f"`nl_s0_step0 (copy)`: {alone.frame['image_id'].nunique()} image(s) measured by "
                          "`nl_s0_step0 (nl_s0_step0)` first (the same checkpoint and settings) are counted once, from there: "
                          "its rows of them are left out of the tables"]
    assert len(load_runs(snaps).frame) == sum(len(load_runs([s]).frame) for s in snaps) and load_runs(snaps).notes == []
    t_both = summarise(both.frame, by=("variant",))
    t_alone = summarise(alone.frame, by=("variant",))
    assert t_both["att_low"].tolist() == t_alone["att_low"].tolist()


def test_figures_of_labels_that_slug_alike_do_not_overwrite_each_other(runs, tmp_path):
    root, base, _ = runs
    other = tmp_path / "other"
    shutil.copytree(base, other)  # no meta: each run is a variant of its own label; of another checkpoint file
    info = json.loads((other / "run.json").read_text())
    info["checkpoint"]["sha256"] = info["settings"]["checkpoint_sha256"] = "1" * 64
    (other / "run.json").write_text(json.dumps(info))
    report = write_report([], tmp_path / "r", labels={"run a": base, "run_a": other}, formats=("png",), images=1, explore=None)
    names = [p.name for p in report.figures]
    assert len(names) == len(set(names)) and all(p.is_file() for p in report.figures)
    assert "query_maps_run_a_backbone.layer2.0.nonlocal_block.png" in names
    assert "query_maps_run_a_backbone.layer2.0.nonlocal_block_2.png" in names


def test_a_label_given_twice_is_refused(runs, tmp_path, capsys):
    root, base, snaps = runs
    assert main(["report", "--label", f"A={base}", "--label", f"A={snaps[0]}", "--out", str(tmp_path / "r")]) == 2
    assert "--label A: a label names one run; given more than once" in capsys.readouterr().err


def test_a_missing_maps_file_is_said_and_a_damaged_one_named(runs, tmp_path):
    root, base, _ = runs
    gone = tmp_path / "gone"
    shutil.copytree(base, gone)
    first = sorted((gone / "maps").glob("*.npz"))[0]
    first.unlink()
    run = nlanalysis.load_run(gone)
    assert len(run.maps.missing) == 1 and len(run.maps) == 1
    with pytest.raises(KeyError, match="its maps file is gone"):
        run.maps[run.maps.missing[0]]
    report = write_report([gone], tmp_path / "r", formats=("png",), images=2, explore=None)
    assert any("maps files of 1 done image(s) are gone" in n for n in report.notes)
    (second,) = (gone / "maps").glob("*.npz")
    with np.load(second) as z:
        arrays = {k: z[k] for k in z.files if k != "cells_0"}
    np.savez(second, **arrays)
    with pytest.raises(ValueError, match=f"{second}: a damaged maps file \\(no 'cells_0' array"):
        nlanalysis.load_run(gone).maps[next(iter(nlanalysis.load_run(gone).maps))]["cells_0"]


def test_a_run_json_without_its_id_type_is_named(runs, tmp_path):
    root, base, _ = runs
    bad = tmp_path / "bad"
    shutil.copytree(base, bad)
    info = json.loads((bad / "run.json").read_text())
    del info["settings"]["selection"]["id_type"]
    (bad / "run.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=f"{bad / 'run.json'}: not an extract run.json \\(no settings.selection.id_type\\)"):
        nlanalysis.load_run(bad)


def test_one_map_of_nan_does_not_set_the_colour_scale():
    from nlanalysis.plots.map_grid import map_norm

    nan, real = np.full((3, 3), np.nan), np.array([[0.1, 0.879], [0.0, 0.2]])
    assert map_norm([nan, real])[0].vmax == map_norm([real, nan])[0].vmax == pytest.approx(0.879)
    assert map_norm([nan])[0].vmax == 1e-12


def test_a_save_maps_all_run_whose_images_all_failed_is_said_not_explored(tmp_path):
    """It used to stop the whole report ("no saved maps to explore; run ... --save-maps all", which it was)."""
    from types import SimpleNamespace

    from nlanalysis.report.explore_links import explore_lines

    def writer(run, path):
        raise AssertionError("no page for a run without maps")

    empty = SimpleNamespace(info={"settings": {"save_maps": "all"}}, maps={}, path=tmp_path / "e")
    lines, pages = explore_lines([("e", empty)], tmp_path / "work", tmp_path / "out", writer)
    assert pages == [] and lines == ["`e` saved every query's map but holds no image with maps (its images failed, see "
                                     "failures.csv, or their maps files are gone): no page to explore"]


def test_another_file_of_the_same_name_and_size_is_not_drawn_under_the_maps(runs, tmp_path):
    """The maps record the sha256 of the image file the run read: a different picture of the same size (another data set's
    folder given as --image-root) is not drawn as if it were the one measured."""
    import hashlib

    from nlanalysis.report.images import load_pixels

    root, base, _ = runs
    run = nlanalysis.load_run(base)
    image_id = next(iter(run.maps))
    path = find_image(run, image_id)
    maps = run.maps[image_id]
    assert maps.file_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_pixels(path, maps) is not None
    other = tmp_path / "other" / path.name
    other.parent.mkdir()
    pixels = np.asarray(Image.open(path).convert("RGB"))
    Image.fromarray(255 - pixels).save(other, quality=95)  # the same size, other content
    assert find_image(run, image_id, other.parent) == other and load_pixels(other, maps) is None


def test_a_report_through_a_link_replaces_the_folder_it_names_and_keeps_the_link(runs, tmp_path):
    root, base, _ = runs
    target = tmp_path / "target"
    target.mkdir()
    (target / "make.sh").write_text("echo mine\n")
    link = tmp_path / "latest"
    link.symlink_to(target, target_is_directory=True)
    write_report([base], link, formats=("png",), images=1, explore=None)
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert (target / "index.md").is_file() and (target / "make.sh").read_text() == "echo mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "target"]  # no .old / .tmp left beside it


def test_runs_of_other_checkpoints_or_settings_are_not_taken_for_copies(runs, tmp_path):
    """Counting an image once applies to the same checkpoint (sha256) and input only: two models that share variant, seed
    and step (v2 and v3 of a design, a planted block and its twin) keep all their rows; a copy measured with another JSD
    seed is the same images measured again (counted once, the note names the setting). A set kept without its maps/ says
    so (not 'files gone')."""
    root, _, snaps = runs
    other = tmp_path / "other_model"
    shutil.copytree(snaps[0], other)
    info = json.loads((other / "run.json").read_text())
    info["checkpoint"]["sha256"] = info["settings"]["checkpoint_sha256"] = "0" * 64  # another file, the same facts
    (other / "run.json").write_text(json.dumps(info))
    one = load_runs([snaps[0]])
    both = load_runs([snaps[0], other])
    assert len(both.frame) == 2 * len(one.frame) and both.notes == []
    reseeded = tmp_path / "reseeded"
    shutil.copytree(snaps[0], reseeded)
    info = json.loads((reseeded / "run.json").read_text())
    info["settings"]["seed"] = 12345
    (reseeded / "run.json").write_text(json.dumps(info))
    again = load_runs([snaps[0], reseeded])
    assert len(again.frame) == len(one.frame) and len(again.notes) == 1 and "other settings: seed)" in again.notes[0]
    numbers_only = tmp_path / "numbers_only"
    shutil.copytree(snaps[0], numbers_only)
    shutil.rmtree(numbers_only / "maps")
    run = nlanalysis.load_run(numbers_only)
    assert run.maps.not_kept and run.maps.missing == [] and len(run.maps) == 0


def test_the_query_distance_figure_uses_the_runs_convention(runs, tmp_path, monkeypatch):
    """A run measured with ``(1-cos)/2`` gets its query-distance heat map in that convention too (it was always 1 - cos,
    beside tables in halves)."""
    import nlanalysis.plots as plots

    root, base, _ = runs
    half = tmp_path / "half"
    shutil.copytree(base, half)
    for name in ("metrics.csv",):
        frame = pd.read_csv(half / name)
        frame.assign(convention="(1-cos)/2").to_csv(half / name, index=False)
    shutil.rmtree(half / "parts", ignore_errors=True)  # read from metrics.csv
    info = json.loads((half / "run.json").read_text())
    del info["assembled_files"]  # the file is edited here, not cut short: unchecked, as in a run.json from before the check
    (half / "run.json").write_text(json.dumps(info))
    seen = []
    real = plots.plot_query_distances
    monkeypatch.setattr(plots, "plot_query_distances", lambda *a, **k: seen.append(k["convention"]) or real(*a, **k))
    report = write_report([half], tmp_path / "r", formats=("png",), images=1, explore=None)
    assert seen == ["(1-cos)/2"] and "cosine distance ((1 − cos)/2)" in report.index_md.read_text()


def test_images_given_by_relative_paths_are_found_from_another_folder(runs, tmp_path, monkeypatch):
    """run.json records the folder extract ran in: a report made elsewhere finds the images its relative paths name
    (they were 'not found' and drawn on grey), and the sha256 check still holds."""
    root, _, _ = runs
    ckpt = root / "tiny.pth"
    (tmp_path / "work").mkdir()
    shutil.copytree(root / "images", tmp_path / "work" / "imgs")
    monkeypatch.chdir(tmp_path / "work")
    args = ["extract", "--ckpt", str(ckpt), "--images", "imgs", "--out", str(tmp_path / "run"), "--save-maps", "--jsd-pairs",
            "0", "--quiet", "--query-dependence", "off", "--limit", "1"]  # fmt: skip
    assert main(args) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    run = nlanalysis.load_run(tmp_path / "run")
    assert run.info["cwd"] == str(tmp_path / "work")
    (image_id,) = list(run.maps)
    found = find_image(run, image_id)
    assert found is not None and found.resolve().parent == (tmp_path / "work" / "imgs").resolve()
    from nlanalysis.report.images import load_pixels

    assert load_pixels(found, run.maps[image_id], False) is not None
