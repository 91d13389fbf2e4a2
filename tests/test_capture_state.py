"""What a capture keeps between forwards: nothing a later forward would be measured with by mistake.

The output projection's Gram matrices follow any in-place change of the weights (an EMA's ``.data.copy_``
too); the valid-pixel mask, object labels and input size given for one forward are not reused by the next.
"""
import copy

import pytest
import torch

from helpers import NLGCNet, randomize_
from nlanalysis.capture import Capture
from nlanalysis.capture.heads import ViTCapture

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _timm():
    timm_vit = pytest.importorskip("timm.models.vision_transformer")  # the NL tests here run without timm
    model = timm_vit.VisionTransformer(img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=4, num_classes=0,
                                       qkv_bias=True, init_values=0.5)  # fmt: skip
    return randomize_(model, std=0.2).eval()


class _ListNet(torch.nn.Module):
    """A model whose input is a list of images (not a 4-D tensor): the capture cannot read its size."""

    def __init__(self) -> None:
        super().__init__()
        self.net = randomize_(NLGCNet()).eval()

    def forward(self, images):
        return self.net(torch.stack(list(images)))


COLUMNS = ("input", "output", "att", "att_jsd", "att_entropy", "att_max", "att_own_object", "own_object_share", "n_query", "n_key")


def _same_stats(a, b) -> None:
    for name in COLUMNS:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), equal_nan=True, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")


def _masks(b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    valid = torch.ones(b, h, w, dtype=torch.bool)
    valid[:, h // 2 :] = False
    objects = torch.zeros(b, h, w, dtype=torch.long)
    objects[:, 2:12, 4:20] = 3
    return valid, objects


def _outputs(model, x, **options):
    """Each layer's per-head ``output`` statistics ``[B, heads]`` of one forward of ``model``."""
    with torch.no_grad(), ViTCapture(model, jsd_pairs=0, **options) as cap:
        model(x)
    return [rec.stats.output[:, :-1] for rec in cap.records]


def _ema_step(model, seed: int) -> None:
    """What an EMA of the weights does: ``.data.copy_``, which leaves the parameters' version counters as they were."""
    g = torch.Generator().manual_seed(seed)
    for blk in model.blocks:
        for p in (blk.attn.proj.weight, blk.ls1.gamma):
            version = p._version
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)
            assert p._version == version  # what a cache keyed on the version misses


@pytest.mark.parametrize("share", [True, False])
def test_per_head_outputs_follow_weights_changed_in_place_between_forwards(share):
    model, x = _timm(), torch.randn(2, 3, 28, 28)
    with torch.no_grad(), ViTCapture(model, jsd_pairs=0, share_softmax=share) as cap:
        model(x)
        _ema_step(model, 7)
        model(x)
    got = [rec.stats.output[:, :-1] for rec in cap.records if rec.call == 1]
    want = _outputs(copy.deepcopy(model), x, share_softmax=share)  # a new module: nothing of the old weights is kept for it
    for before, after, new in zip(cap.records[:2], got, want, strict=True):
        assert not torch.allclose(before.stats.output[:, :-1], new)  # the new weights do change the per-head outputs
        torch.testing.assert_close(after, new, rtol=1e-5, atol=1e-6)


def test_per_head_outputs_follow_weights_changed_between_captures():
    model, x = _timm(), torch.randn(2, 3, 28, 28)
    _outputs(model, x)
    _ema_step(model, 8)
    for got, want in zip(_outputs(model, x), _outputs(copy.deepcopy(model), x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _first_layer(model):
    """The first attention layer's module and adapter, and its LayerScale vector."""
    from nlanalysis.adapters import list_blocks

    block = list_blocks(model)[0]
    return block.module, block.adapter, model.blocks[0].ls1.gamma.detach()


def _change(model, how: str) -> None:
    """Change the first layer's weights in place as an EMA writes them (``.data``: no version counter moves)."""
    w = model.blocks[0].attn.proj.weight
    gamma = model.blocks[0].ls1.gamma
    versions = w._version, gamma._version
    data = w.data
    if how == "permute rows":  # each moved row changes as a whole (without the LayerScale its Gram would not)
        data.copy_(data[torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(3))])
    elif how == "swap two in a row":
        data[5, [2, 9]] = data[5, [9, 2]].clone()
    elif how == "one ulp":
        data[7, 3] = torch.nextafter(data[7, 3], torch.tensor(float("inf")))
    elif how == "one ulp of a tiny one":  # under the rounding of any sum of the weights' values
        data[7, 3] = torch.nextafter(data[7, 3], torch.tensor(1.0))
    elif how == "one ulp of the LayerScale":
        gamma.data[4] = torch.nextafter(gamma.data[4], torch.tensor(float("inf")))
    assert (w._version, gamma._version) == versions


@pytest.mark.parametrize("how", ["permute rows", "swap two in a row", "one ulp", "one ulp of a tiny one", "one ulp of the LayerScale"])
def test_the_gram_matrices_are_remade_for_any_change_of_the_weights(how):
    """The kept Gram matrices are used while the weights are the same and remade after any change: a permutation of
    the rows, two elements swapped, one element moved by one ulp (a tiny one too: 1e-30 by 1e-45)."""
    from nlanalysis.capture.heads import _gram
    from nlanalysis.measure.heads import gram_matrices

    model = _timm()
    module, adapter, gamma = _first_layer(model)
    cpu = torch.device("cpu")
    if how == "one ulp of a tiny one":
        module.proj.weight.data[7, 3] = 1e-30
    first = _gram(module, adapter, gamma, cpu)
    assert _gram(module, adapter, gamma, cpu) is first  # the same weights: kept
    before = module.proj.weight.detach().clone(), gamma.clone()
    _change(model, how)
    assert not (torch.equal(module.proj.weight, before[0]) and torch.equal(gamma, before[1]))
    again = _gram(module, adapter, gamma, cpu)
    assert again is not first
    assert torch.equal(again, gram_matrices(module.proj.weight, adapter.num_heads(module), gamma).float())
    assert _gram(module, adapter, gamma, cpu) is again


def test_per_head_outputs_follow_a_permutation_of_the_projections_rows():
    """Rows of the output projection permuted in place between captures (each moved row changes as a whole): the per-head
    outputs are measured with the permuted weights (the LayerScale weighs the rows: the Gram matrices change)."""
    model, x = _timm(), torch.randn(2, 3, 28, 28)
    before = _outputs(model, x)
    _change(model, "permute rows")
    got, want = _outputs(model, x), _outputs(copy.deepcopy(model), x)
    assert not torch.allclose(before[0], want[0])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("vit", [False, True])
def test_a_mask_and_labels_are_the_next_forwards_only(vit):
    model = _timm() if vit else randomize_(NLGCNet()).eval()
    x = torch.randn(2, 3, 28, 28)
    valid, objects = _masks(2, 28, 28)
    with torch.no_grad(), Capture(model, jsd_pairs=0) as cap:
        cap.set_valid(valid)
        cap.set_objects(objects)
        model(x)
        model(x)  # neither given again: all pixels valid, no objects
    with torch.no_grad(), Capture(model, jsd_pairs=0) as bare:
        model(x)
    masked, later = ([r for r in cap.records if r.call == call] for call in (0, 1))
    for first, second, want in zip(masked, later, bare.records, strict=True):
        assert (first.stats.n_query < want.stats.n_query).all() and not first.stats.att_own_object.isnan().all()
        _same_stats(second.stats, want.stats)


def _direct(model, x, vit: bool):
    """Run the model's sites directly, outside a forward of the model (its hooks on the model itself do not fire)."""
    if vit:
        return model.blocks(model.norm_pre(model._pos_embed(model.patch_embed(x))))
    return model.gc(model.nl(model.stem(x)))


@pytest.mark.filterwarnings("ignore:capture.*ran more than once")  # the direct runs: no model forward between them
@pytest.mark.parametrize("vit", [False, True], ids=["NL", "ViT"])
def test_sites_run_outside_a_forward_see_what_was_given_for_the_next(vit):
    """Blocks run directly after set_* are measured with what was given (not with the forward before's), every run of
    a chain; the next forward takes it, and the one after runs without."""
    model = _timm() if vit else randomize_(NLGCNet()).eval()
    x = torch.randn(2, 3, 28, 28)
    valid, objects = _masks(2, 28, 28)
    with torch.no_grad(), Capture(model, jsd_pairs=0) as cap:
        model(torch.randn(2, 3, 28, 28))  # a forward without masks before: its (no) masks are not the direct runs'
        cap.set_valid(valid)
        cap.set_objects(objects)
        cap.set_input_size((28, 28))
        _direct(model, x, vit)
        _direct(model, x, vit)
        model(x)
        model(x)
    with torch.no_grad(), Capture(model, jsd_pairs=0) as want:
        want.set_valid(valid)
        want.set_objects(objects)
        model(x)
        model(x)
    n = len(want.records) // 2
    got = cap.records[n:]
    assert len(got) == 4 * n
    masked, bare = want.records[:n], want.records[n:]
    for rec, ref in zip(got, masked * 3 + bare, strict=True):
        assert rec.input_size == (28, 28)
        _same_stats(rec.stats, ref.stats)
    assert (masked[0].stats.n_query < bare[0].stats.n_query).all() and not masked[0].stats.att_own_object.isnan().all()


@pytest.mark.filterwarnings("ignore:capture.*ran more than once")  # the direct run counts on from the forward's uses
@pytest.mark.parametrize("vit", [False, True], ids=["NL", "ViT"])
def test_a_site_run_outside_a_forward_after_a_masked_one_has_no_mask(vit):
    """A direct run takes no mask or labels from the forward before it: a 3-image batch after a masked 2-image forward
    is measured unmasked (not refused for the other batch's mask)."""
    model = _timm() if vit else randomize_(NLGCNet()).eval()
    x, y = torch.randn(2, 3, 28, 28), torch.randn(3, 3, 28, 28)
    valid, objects = _masks(2, 28, 28)
    with torch.no_grad(), Capture(model, jsd_pairs=0) as cap:
        cap.set_valid(valid)
        cap.set_objects(objects)
        model(x)
        n = len(cap.records)
        _direct(model, y, vit)
    with torch.no_grad(), Capture(model, jsd_pairs=0) as bare:
        model(y)
    assert len(cap.records) == 2 * n
    for rec, ref in zip(cap.records[n:], bare.records, strict=True):
        assert rec.input_size is None  # the forward before's is not the direct run's either
        _same_stats(rec.stats, ref.stats)
        assert (rec.stats.n_query == ref.stats.n_query).all() and rec.stats.att_own_object.isnan().all()


def test_the_input_size_is_each_forwards_own():
    model = _ListNet()
    with torch.no_grad(), Capture(model, jsd_pairs=0, queries=[(40, 50)]) as cap:
        model(torch.randn(2, 3, 64, 64))  # a 4-D input: its own size
        with pytest.raises(ValueError, match=r"model input size is unknown: call Capture\.set_input_size"):
            model(list(torch.randn(2, 3, 32, 32)))  # the query (40, 50) px is not mapped with the 64x64 size of before
        cap.set_input_size((64, 64))
        model(list(torch.randn(2, 3, 64, 64)))
    # the forward that raised had index 1: the next is 2
    assert [(r.call, r.input_size) for r in cap.records] == [(0, (64, 64)), (0, (64, 64)), (2, (64, 64)), (2, (64, 64))]
    with torch.no_grad(), Capture(model, jsd_pairs=0) as cap:
        model(torch.randn(2, 3, 64, 64))
        model(list(torch.randn(2, 3, 32, 32)))
        cap.set_input_size((32, 32))
        model(list(torch.randn(2, 3, 32, 32)))
        model(list(torch.randn(2, 3, 32, 32)))  # the size given was the forward before's
    assert [r.input_size for r in cap.records[::2]] == [(64, 64), None, (32, 32), None]


def test_a_mask_of_another_size_than_the_input_is_refused():
    model = _ListNet()
    x = torch.randn(2, 3, 32, 32)
    wrong = torch.ones(2, 7, 5, dtype=torch.bool)
    with torch.no_grad(), Capture(model.net) as cap:
        cap.set_valid(wrong)
        with pytest.raises(ValueError, match=r"the valid-pixel mask is 7x5 \(H x W\) but the model input is 32x32"):
            model.net(x)
    with torch.no_grad(), Capture(model) as cap:
        cap.set_valid(wrong)
        with pytest.raises(ValueError, match=r"the valid-pixel mask is 7x5 \(H x W\) but the size of the model input is "
                                             r"unknown.*Capture\.set_input_size"):  # fmt: skip
            model(list(x))
        cap.set_objects(torch.zeros(2, 32, 32, dtype=torch.long))
        with pytest.raises(ValueError, match=r"the object label map is 32x32 \(H x W\) but the size of the model input is unknown"):
            model(list(x))
        cap.set_input_size((32, 32))
        cap.set_valid(wrong)
        with pytest.raises(ValueError, match=r"the valid-pixel mask is 7x5 \(H x W\) but the model input is 32x32"):
            model(list(x))
        cap.set_input_size((32, 32))
        cap.set_valid(torch.ones(2, 32, 32, dtype=torch.bool))
        model(list(x))
    assert len(cap.records) == 2 and cap.records[0].input_size == (32, 32)


class _Fails(Exception):
    pass


def _fail_once(module) -> list:
    """Make ``module``'s next run raise (after the sites before it were measured); returns the handle list."""
    def hook(mod, args):
        handles[0].remove()
        raise _Fails

    handles = [module.register_forward_pre_hook(hook)]
    return handles


@pytest.mark.parametrize("vit", [False, True], ids=["NL", "ViT"])
def test_a_forward_that_raised_does_not_lend_its_index_to_the_next(vit):
    """A forward that raises after some sites ran never reaches the model's output: its records kept the next forward's
    call index, and a ViT's first layer in the next forward took the failed forward's last rows as its previous
    layer (cross_site_cos measured against another forward's layer, where it has none)."""
    torch.manual_seed(0)
    if vit:
        model, x = _timm(), torch.randn(2, 3, 28, 28)
        late, options = model.blocks[1], {"query_dependence": "cheap", "jsd_pairs": 0}
    else:
        model, x = randomize_(NLGCNet()).eval(), torch.randn(2, 3, 32, 32)
        late, options = model.gc, {"jsd_pairs": 0}  # sampled pairs: the generator has moved on
    make = ViTCapture if vit else Capture
    with torch.no_grad(), make(model, **options) as cap:
        _fail_once(late)
        with pytest.raises(_Fails):
            model(x)
        failed = [rec.call for rec in cap.records]
        model(x)
        calls = [rec.call for rec in cap.records[len(failed):]]
    assert failed and calls and set(failed).isdisjoint(calls), (failed, calls)
    with torch.no_grad(), make(model, **options) as fresh:
        model(x)
    assert [r.name for r in cap.records[len(failed):]] == [r.name for r in fresh.records]
    for got, want in zip(cap.records[len(failed):], fresh.records):
        _same_stats(got.stats, want.stats)
    if vit:
        got = [v for (call, *_), v in cap.cross_site.items() if call == calls[0]]
        want = list(fresh.cross_site.values())
        assert len(got) == len(want) == 2
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, equal_nan=True)
        assert torch.isnan(got[0]).all(), "the first layer of a forward has no previous layer"


@pytest.mark.filterwarnings("ignore:capture.*ran more than once")  # the direct run counts on from the forward's uses
def test_a_forward_that_raised_leaves_direct_runs_outside_it():
    """A forward that raised never reached the model's output hook; its end is still seen (an ``always_call`` hook), so
    a direct run after it is measured with what was given since, not with the masks the failed forward took."""
    model = randomize_(NLGCNet()).eval()
    valid, objects = _masks(2, 28, 28)
    y = torch.randn(3, 3, 28, 28)
    with torch.no_grad(), Capture(model, jsd_pairs=0) as cap:
        cap.set_valid(valid)
        cap.set_objects(objects)
        _fail_once(model.gc)
        with pytest.raises(_Fails):
            model(torch.randn(2, 3, 28, 28))
        model.nl(model.stem(y))  # batch 3: the failed forward's masks (batch 2) would be refused
    assert [(r.call, r.stats.n_query.tolist()) for r in cap.records] == [(0, [21, 21]), (1, [49, 49, 49])]
