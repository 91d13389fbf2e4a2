"""nlanalysis.schema: the column lists of committed result sets, the range check, the README table."""
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nlanalysis import schema
from nlanalysis.analyze import STAT_COLUMNS
from nlanalysis.extract import COLUMNS, VIT_COLUMNS
from nlanalysis.extract.analyses import IMAGE_COLUMNS, OBJECT_COLUMNS
from nlanalysis.extract.results import SUMMARY_COLUMNS
from nlanalysis.measure.head_controls import CONTROL_COLUMNS
from nlanalysis.tables import HEADERS, TABLE_STATS

README = Path(__file__).resolve().parents[1] / "README.md"

# The metrics.csv headers of result sets written before the schema existed (committed under
# reports/, and resumed runs): written out here, not derived, so that a change to the schema fails.
NL_METRICS = [
    "image_id", "file_name", "block", "family", "mode", "height", "width", "n_query", "n_key",
    "input", "output", "att", "att_jsd", "att_jsd_stderr", "att_entropy", "att_max", "att_zero_rows",
    "input_zero", "output_zero", "att_own_object", "own_object_share",
    "ctrl_att", "ctrl_att_jsd", "ctrl_att_own_object", "ctrl_temperature",
    "ctrl_form", "ctrl_form_att", "ctrl_form_att_jsd", "ctrl_form_att_own_object", "ctrl_form_gap",
    "query_independent", "convention", "image_height", "image_width",
]  # fmt: skip
VIT_METRICS = [
    "image_id", "file_name", "block", "layer", "head", "family", "mode", "num_heads", "n_prefix", "keys",
    "height", "width", "n_query", "n_key",
    "input", "output", "att", "att_jsd", "att_jsd_stderr", "att_entropy", "att_max", "att_zero_rows",
    "input_zero", "output_zero", "att_own_object", "own_object_share",
    "ctrl_att", "ctrl_att_jsd", "ctrl_att_own_object", "ctrl_temperature",
    "ctrl_form", "ctrl_form_att", "ctrl_form_att_jsd", "ctrl_form_att_own_object", "ctrl_form_gap", "att_prefix_mass",
    "query_independent", "convention", "input_space", "image_height", "image_width",
    # recorded by extract since the ViT report renders runs; older ViT runs refuse to resume into them
    # (run.json's settings: measure.locality)
    "att_local", "att_local_uniform", "peak_offsets",
]  # fmt: skip


def test_metrics_columns_equal_those_of_existing_result_sets():
    assert schema.metrics_columns(schema.NL) == NL_METRICS == COLUMNS
    assert schema.metrics_columns(schema.VIT) == VIT_METRICS == VIT_COLUMNS


@pytest.mark.parametrize("run, site", [("demo/runs/gc", schema.NL), ("demo/runs/embedded_gaussian", schema.NL), ("vit/run", schema.VIT)])
def test_committed_result_sets_have_the_schema_columns_and_ranges(run, site):
    path = Path(__file__).resolve().parents[1] / "reports" / run / "metrics.csv"
    frame = pd.read_csv(path)
    suite = json.loads((path.parent / "run.json").read_text())["settings"]["measure"].get("query_dependence", "off") != "off"
    assert list(frame.columns) == schema.metrics_columns(site, query=suite)
    schema.check_ranges(frame, str(path))  # real numbers lie in their ranges


def test_derived_lists_keep_their_members_and_order():
    assert STAT_COLUMNS == NL_METRICS[NL_METRICS.index("input") : NL_METRICS.index("query_independent")]
    assert list(CONTROL_COLUMNS) == ["ctrl_att", "ctrl_att_jsd", "ctrl_att_own_object", "ctrl_temperature"]
    assert list(IMAGE_COLUMNS) == ["image_id", "file_name", "image_height", "image_width"]
    assert list(OBJECT_COLUMNS) == ["att_own_object", "own_object_share"]
    assert SUMMARY_COLUMNS == ["input", "output", "att", "att_jsd", "att_entropy", "att_max", "att_zero_rows",
                               "att_own_object", "own_object_share", "att_prefix_mass"]  # fmt: skip
    assert TABLE_STATS == ["input", "output", "att", "att_jsd", "ctrl_att", "ctrl_att_jsd", "ctrl_form_att", "att_entropy", "att_max",
                           "att_zero_rows", "att_own_object", "own_object_share", "ctrl_att_own_object", "own_object_density",
                           "own_object_lift", "own_object_lift_objects"]  # fmt: skip
    assert HEADERS["att_jsd"] == "att JSD (bits)" and HEADERS["ctrl_att"] == "att, random proj." and HEADERS["block"] == "block"


def test_registry_is_consistent():
    names = [c.name for c in schema.REGISTRY]
    assert len(names) == len(set(names))
    query_headline = {"logit_rank1", "att_gain_only", "gain_only_tv", "unary_var_share", "att_pairwise_only", "qk_nmi", "att_distance_px",
                      "same_category_lift"}
    assert {c.name for c in schema.REGISTRY if c.header} == set(schema.TABLE1) | query_headline  # the suite's: after Table 1's
    for c in schema.REGISTRY:
        assert c.role in schema.ROLES and c.dtype in ("str", "int", "float", "bool") and c.sites <= schema.BOTH
        assert c.meaning and "\n" not in c.meaning
        assert c.range is None or c.range[0] < c.range[1]
    with pytest.raises(ValueError, match="unknown result column 'atten'"):
        schema.column("atten")
    with pytest.raises(ValueError, match="unknown site"):
        schema.names("vit")


def test_value_range_halves_distances_under_the_half_convention():
    assert schema.value_range("att") == (0.0, 2.0) and schema.value_range("att", "(1-cos)/2") == (0.0, 1.0)
    assert schema.value_range("att_entropy", "(1-cos)/2") == (0.0, 1.0)
    assert schema.value_range("ctrl_temperature") == (0.0, math.inf) and schema.value_range("block") is None


def _rows():
    return pd.DataFrame({
        "block": ["a", "b", "c"], "att": [0.1, math.nan, 2.0], "att_entropy": [1.0, 0.0, 0.5],
        "input_zero": [0, 3, 0], "head": [-1, 0, 5], "not_a_column": [-9.0, 99.0, 1e9],
    })  # fmt: skip


def test_check_ranges_accepts_values_in_range_and_nan():
    schema.check_ranges(_rows(), "ok.csv")
    tiny = _rows().assign(att=[-1e-9, 0.0, 2.0 + 1e-9])  # float rounding at the ends
    schema.check_ranges(tiny, "ok.csv")


def test_check_ranges_names_file_row_and_column_of_the_first_bad_value():
    frame = _rows()
    frame.loc[2, "att"] = 2.5  # later row
    frame.loc[1, "att_entropy"] = 1.2  # first bad row
    frame.loc[1, "input_zero"] = -1  # same row, later column
    with pytest.raises(ValueError, match=r"run/metrics\.csv: row 1 \(CSV line 3\), column 'att_entropy' = 1\.2 lies outside \[0\.0, 1\.0\]"):
        schema.check_ranges(frame, "run/metrics.csv")
    frame.loc[1, ["att_entropy", "input_zero"]] = [0.5, 0]
    with pytest.raises(ValueError, match=r"row 2 .*column 'att'"):
        schema.check_ranges(frame, "x")
    with pytest.raises(ValueError, match=r"row 0 .*column 'head'"):
        schema.check_ranges(_rows().assign(head=[-2, 0, 0]), "x")
    with pytest.raises(ValueError, match=r"row 1 .*column 'att' = 'oops'"):
        schema.check_ranges(_rows().assign(att=[0.1, "oops", 0.2]), "x")


def _readme_table() -> str:
    text = README.read_text()
    found = re.search(r"<!-- columns: nlanalysis\.schema\.readme_table\(\) -->\n(.*?)<!-- /columns -->", text, re.S)
    assert found, "README.md: the column table's markers are missing"
    return found.group(1)


def test_readme_column_table_is_the_schema():
    assert _readme_table() == schema.readme_table(), (
        "README.md's column table is out of date: paste nlanalysis.schema.readme_table() between its markers"
    )
    rows = [line.split(" | ") for line in _readme_table().splitlines()[2:]]
    listed = [r[0].strip("|` ") for r in rows]
    assert [c for c in listed if c in STAT_COLUMNS] == STAT_COLUMNS and "att_prefix_mass" in listed
    # the query-dependence suite, the object context and the control in each map's form are documented too
    assert {"logit_rank1", "att_gain_only", "qk_nmi", "cross_site_cos", "own_object_lift", "ctrl_form", "ctrl_form_att"} <= set(listed)
    assert all(r[1] == schema.column(r[0].strip("|` ")).meaning for r in rows)


def test_every_column_of_an_analysis_frame_is_known():
    pytest.importorskip("timm")
    import torch
    from timm.models.vision_transformer import VisionTransformer

    from nlanalysis.analyze_vit import analyze_vit

    model = VisionTransformer(img_size=28, patch_size=7, embed_dim=16, depth=1, num_heads=2, num_classes=0).eval()
    frame = analyze_vit(model, torch.randn(1, 3, 28, 28), jsd_pairs=4)
    stats = [c for c in frame.columns if c in schema.statistic_columns(schema.VIT)]
    assert stats == [c for c in schema.statistic_columns(schema.VIT) if not c.startswith("ctrl_")]
    schema.check_ranges(frame, "analyze_vit")
    assert np.isfinite(frame["att"]).all()
