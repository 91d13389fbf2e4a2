"""The package's layers hold: data -> model + capture -> measure -> store -> plots/report, one way.

The contract lives in pyproject.toml ([tool.importlinter]) and is checked by import-linter, a
well-kept tool for exactly this; a plain ``import nlanalysis`` must stay light (no timm, onnx or
transformers, and none of the ViT-only modules)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_layers_contract_is_kept(tmp_path):
    pytest.importorskip("importlinter", reason="import-linter is in the dev extra")
    from importlinter.cli import lint_imports

    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 0, "the layers contract in pyproject.toml is broken: run `lint-imports` for the import chain"


def test_the_contract_names_every_top_level_module():
    """A new top-level module or package must be placed in a layer (or the contract does not see it)."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    named = {part.strip() for contract in config for layer in contract["layers"] for part in layer.split("|")}
    package = ROOT / "nlanalysis"
    found = {f"nlanalysis.{p.stem}" for p in package.glob("*.py") if p.stem not in ("__init__", "__main__")}
    found |= {f"nlanalysis.{p.name}" for p in package.iterdir() if (p / "__init__.py").exists()}
    assert found - named == set(), f"modules in no layer of the contract: {sorted(found - named)}"


def test_plain_import_loads_no_optional_or_vit_only_module():
    script = (
        "import json, sys, nlanalysis\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT).stdout)
    heavy = [m for m in loaded if m.split(".")[0] in ("timm", "onnx", "onnxruntime", "transformers")]
    vit_only = [
        m for m in loaded
        # (nlanalysis.kernels serves NL blocks too since their in-pass measure: its C code is built on first use, not on import)
        if m.startswith(("nlanalysis.checkpoints.vit", "nlanalysis.vit", "nlanalysis.report"))
        or m in ("nlanalysis.capture.heads", "nlanalysis.measure.heads", "nlanalysis.measure.head_controls", "nlanalysis.analyze_vit")
    ]  # fmt: skip
    assert heavy == [] and vit_only == []


def test_vit_alias_reachable_from_a_plain_import():
    """README: ``nlanalysis.vit.list_vit_models()`` after ``import nlanalysis`` (imported on first use, not before)."""
    script = (
        "import sys, nlanalysis\n"
        "assert 'nlanalysis.vit' not in sys.modules\n"
        "names = nlanalysis.vit.list_vit_models()\n"
        "assert names and all(isinstance(n, str) for n in names), names\n"
        "try:\n    nlanalysis.no_such_thing\nexcept AttributeError as err:\n    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "no attribute 'no_such_thing'" in out.stdout
