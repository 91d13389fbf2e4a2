"""The main job on the shipped trained checkpoints and scenes (a few scenes, as CI can afford)."""
import pandas as pd
import torch

from nlanalysis.checkpoints import load_checkpoint
from nlanalysis.demo import run_demo
from nlanalysis.train.run import shipped_checkpoints
from nlanalysis.train.variants import VARIANTS


def test_every_variant_ships_trained_with_its_metric():
    shipped = shipped_checkpoints()
    assert set(shipped) == set(VARIANTS)
    for variant, path in shipped.items():
        meta = torch.load(path, weights_only=True)["meta"]  # the baseline has no block to rebuild
        assert meta["variant"] == variant and meta["final"] is True and meta["storage"] == "float16"
        assert meta["miou"] > 0.2  # trained: an untrained SceneNet scores ~0.001
        if variant != "baseline":
            assert load_checkpoint(path).blocks
    assert sum(p.stat().st_size for p in shipped.values()) < 10 * 2**20


def test_demo_writes_a_report(tmp_path):
    report = run_demo(tmp_path, scenes=2, progress=False)
    assert report.index_md.is_file() and report.index_html.is_file()
    table = pd.read_csv(tmp_path / "report" / "tables" / "table1.csv")
    assert set(table.variant) == set(VARIANTS) - {"baseline"}
    text = report.index_md.read_text()
    assert "1 − cos" in text and "Figure 2" in text
    # rerunning resumes: nothing is recomputed, the same rows come back
    before = (tmp_path / "runs" / "gc" / "metrics.csv").read_text()
    run_demo(tmp_path, scenes=2, progress=False)
    assert (tmp_path / "runs" / "gc" / "metrics.csv").read_text() == before
