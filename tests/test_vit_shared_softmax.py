"""One softmax per layer: the model's attention output from the measured maps equals torch's fused
kernel, the statistics equal those of the separate pass, and every call it cannot answer exactly is
left to torch."""
import pytest
import torch
import torch.nn.functional as F

from helpers import randomize_
from nlanalysis.vit import ViTCapture, kernels
from nlanalysis.blocks.heads import HeadAttention
from nlanalysis.measure.heads import attend, heads_batch, measure_heads
from nlanalysis.capture import shared_softmax
from nlanalysis.capture.shared_softmax import SharedSoftmax, sdpa_arguments
from nlanalysis.blocks.tokens import TokenLayout

timm_vit = pytest.importorskip("timm.models.vision_transformer")
pytestmark = pytest.mark.skipif(not kernels.available(), reason=f"no native kernels here: {kernels.why_unavailable()}")
FIELDS = ("input", "output", "att", "att_jsd", "att_jsd_stderr", "att_entropy", "att_max", "att_zero_rows",
          "att_prefix_mass", "att_own_object", "own_object_share")  # fmt: skip


def _qkv(b=3, heads=4, layout=TokenLayout((5, 6), 1, 2), d=16, seed=0, sharp=2.0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, layout.n_tokens, 3, heads, d, generator=g).permute(2, 0, 3, 1, 4)  # strided, as timm's
    return qkv[0] * sharp, qkv[1] * sharp, qkv[2]


def test_row_kernel_leaves_the_softmax_of_every_row_in_place():
    """probs= (here the logits themselves, a slice of rows of a bigger buffer) holds softmax(scale * logits)
    after the call, padding queries included, while the statistics are those of the plain call."""
    g = torch.Generator().manual_seed(1)
    buf = torch.randn(2, 3, 9, 11, generator=g) * 4
    rows = buf[:, :, 2:]  # 7 patch queries after 2 prefix rows: read in place through the row stride
    want = torch.softmax(rows.double() * 0.7, -1).float()
    qm = torch.ones(2, 7, dtype=torch.bool)
    qm[1, 3:] = False
    s0, sums0 = kernels.row_stats(rows.clone(), None, qm, 2, 2, scale=0.7)
    before, whole = buf[:, :, :2].clone(), buf.clone()
    s1, sums1 = kernels.row_stats(rows, None, qm, 2, 2, scale=0.7, probs=rows)
    assert torch.allclose(rows, want, rtol=2e-6, atol=1e-9)
    assert torch.equal(buf[:, :, :2], before)  # the rows outside the view are untouched
    assert torch.allclose(s0, s1, atol=1e-6) and torch.allclose(sums0, sums1, rtol=1e-6)
    # pre=2: the two class/register rows ahead of the patch queries are softmaxed too, and only that
    s2, sums2 = kernels.row_stats(whole, None, qm, 2, 2, scale=0.7, probs=whole, pre=2)
    assert torch.allclose(whole, torch.cat([torch.softmax(before.double() * 0.7, -1).float(), want], 2), rtol=2e-6, atol=1e-9)
    assert torch.allclose(s0, s2, atol=1e-6) and torch.allclose(sums0, sums2, rtol=1e-6)
    with pytest.raises(ValueError, match="needs probs"):
        kernels.row_stats(whole, None, qm, 2, 2, pre=2)
    with pytest.raises(ValueError, match="strided as the logits"):
        kernels.row_stats(torch.randn(2, 3, 7, 11), None, None, 2, 2, probs=torch.empty(2, 3, 11, 7).transpose(2, 3))


@pytest.mark.parametrize("keys", ["patch", "all"])
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_attend_equals_fused_attention_and_the_separate_statistics(keys, chunk_size):
    layout = TokenLayout((5, 6), 1, 2)
    q, k, v = _qkv(layout=layout)
    valid = torch.ones(3, 5, 6, dtype=torch.bool)
    valid[0, :, 4:] = valid[2, 3:] = False
    objects = torch.randint(0, 3, (3, 5, 6), generator=torch.Generator().manual_seed(2))
    x, branch = torch.randn(3, layout.n_tokens, 20), torch.randn(3, layout.n_tokens, 20)
    att = HeadAttention(q, k, 0.25, layout, keys)
    batch = heads_batch(layout, keys, 3, valid, jsd_pairs=16, generator=torch.Generator().manual_seed(3), objects=objects)
    out, maps = attend(att, v, batch, chunk_size)
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=0.25).float()
    assert out.shape == want.shape and torch.allclose(out, want, rtol=1e-5, atol=1e-6)
    assert out.transpose(1, 2).is_contiguous()  # the layout torch's fused CPU kernel returns
    shared = measure_heads(att, x, branch, maps=maps)
    separate = measure_heads(att, x, branch, batch=batch, kernels="eager")
    for name in FIELDS:
        a, b = getattr(shared, name).double(), getattr(separate, name).double()
        assert torch.allclose(a, b, atol=2e-6, equal_nan=True), (name, a, b)
    with pytest.raises(ValueError, match="another batch"):
        measure_heads(att, x, branch, maps=maps, batch=heads_batch(layout, keys, 3))
    with pytest.raises(ValueError, match="value must be"):
        attend(att, v[:, :, 1:], batch)


def _timm(**kw):
    args = dict(img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=4, num_classes=0, qkv_bias=True, init_values=0.5)
    return randomize_(timm_vit.VisionTransformer(**{**args, **kw}), std=0.2).eval()


def test_capture_answers_the_models_attention_from_the_measured_maps():
    model = _timm(reg_tokens=2)
    x = torch.randn(3, 3, 28, 28)
    calls = []
    real = F.scaled_dot_product_attention
    with torch.no_grad():
        bare = model(x)
        runs = {}
        for share in (True, False):
            with ViTCapture(model, jsd_pairs=10_000, share_softmax=share) as cap, SharedSoftmax(lambda c: calls.append(1)):
                runs[share] = (model(x), cap.records)
    assert len(calls) == 2  # a mode outside sees the two calls of the run that left them to torch, not the answered ones
    assert torch.equal(runs[False][0], bare)  # share_softmax=False: torch computes every op
    assert torch.allclose(runs[True][0], bare, rtol=1e-4, atol=1e-5) and not torch.equal(runs[True][0], bare)
    for a, b in zip(runs[True][1], runs[False][1]):
        for name in FIELDS:
            assert torch.allclose(getattr(a.stats, name), getattr(b.stats, name), atol=2e-6, equal_nan=True), name
    assert F.scaled_dot_product_attention is real and torch._C._len_torch_function_stack() == 0


@pytest.mark.parametrize("case", ["shared k_norm", "call outside the span"])
def test_the_mode_is_active_only_in_the_span_and_a_call_outside_it_is_recomputed(monkeypatch, case):
    """timm's span (``k_norm`` .. ``proj``): with one ``k_norm`` module shared by both layers, each layer answers its own
    call only (the other layer's run of ``k_norm`` does not push its mode); a call that falls outside the span is left
    to torch and the maps are recomputed: the statistics equal those of share_softmax=False either way."""
    from nlanalysis.adapters.vit import TimmViTAdapter

    model = _timm()
    if case == "shared k_norm":
        model.blocks[1].attn.k_norm = model.blocks[0].attn.k_norm
    else:  # a span that starts after the call: nothing is answered
        monkeypatch.setattr(TimmViTAdapter, "sdpa_span", lambda self, m: (m.proj, m.proj))
    x = torch.randn(2, 3, 28, 28)
    depth = []  # torch's function-mode stack at points outside the span: empty at each
    for blk in model.blocks:
        for m in (blk.attn.q_norm, blk.attn.proj, blk.ls1, blk.norm2):
            m.register_forward_hook(lambda mod, a, o: depth.append(torch._C._len_torch_function_stack()))
    with torch.no_grad():
        bare = model(x)
        runs = {}
        for share in (True, False):
            with ViTCapture(model, jsd_pairs=40, share_softmax=share) as cap:  # sampled pairs: one draw per forward
                out = model(x)
            runs[share] = (out, _stats(cap.records), cap.shared_calls)
    assert depth and not any(depth)
    assert runs[True][2] == (2 if case == "shared k_norm" else 0)
    assert torch.allclose(runs[True][0], bare, rtol=1e-4, atol=1e-5)
    _same(runs[True][1], runs[False][1])
    assert torch._C._len_torch_function_stack() == 0


def test_an_attention_function_wrapped_by_another_tool_is_still_answered(monkeypatch):
    """TorchLens replaces torch's functions with Python wrappers process-wide; where nlanalysis is imported after
    that, the function it knows is the wrapper while the mode receives torch's C function behind it."""
    model = _timm()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        bare = model(x)
        with ViTCapture(model, jsd_pairs=50, share_softmax=False) as ref:
            model(x)
    real, through = F.scaled_dot_product_attention, []

    def wrapped(*args, **kwargs):
        through.append(1)
        return real(*args, **kwargs)

    wrapped.__name__ = real.__name__
    monkeypatch.setattr(F, "scaled_dot_product_attention", wrapped)
    monkeypatch.setattr(shared_softmax, "_SDPA_OPS", shared_softmax.Ops((F, "scaled_dot_product_attention")))  # made after the wrapping
    with torch.no_grad(), ViTCapture(model, jsd_pairs=50) as cap:
        out = model(x)
    assert through and not torch.equal(out, bare)  # answered from the measured maps, not torch's fused kernel
    assert torch.allclose(out, bare, rtol=1e-4, atol=1e-5)
    for a, b in zip(cap.records, ref.records):
        for name in FIELDS:
            assert torch.allclose(getattr(a.stats, name), getattr(b.stats, name), atol=2e-6, equal_nan=True), name


def test_an_unrelated_operator_of_the_same_name_is_not_answered():
    """A custom operator named ``scaled_dot_product_attention`` (here: sigmoid attention) is not torch's: the
    handler is never offered it and its result is its own."""
    if not hasattr(torch.ops.nlanalysis_test, "scaled_dot_product_attention"):
        @torch.library.custom_op("nlanalysis_test::scaled_dot_product_attention", mutates_args=())
        def _sigmoid_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(q @ k.transpose(-1, -2)) @ v

    op = torch.ops.nlanalysis_test.scaled_dot_product_attention
    q, k, v = _qkv(b=1, layout=TokenLayout((2, 2), 1, 0))
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    offered = []
    with torch.no_grad(), SharedSoftmax(lambda call: offered.append(1) or F.scaled_dot_product_attention(call["query"], call["key"], call["value"])):
        got = op(q, k, v)
    assert not offered and torch.allclose(got, torch.sigmoid(q @ k.transpose(-1, -2)) @ v)


def test_calls_it_cannot_answer_exactly_go_to_torch():
    """Eager kernels, masks: torch's own attention runs (outputs bit-identical to a bare forward)."""
    model = _timm()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        bare = model(x)
    with torch.no_grad(), ViTCapture(model, kernels="eager") as cap:
        assert torch.equal(model(x), bare) and len(cap.records) == 2
    q, k, v = _qkv(b=1, layout=TokenLayout((2, 2), 1, 0))
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    named = sdpa_arguments((q, k, v), {"attn_mask": mask})
    assert named["attn_mask"] is mask and named["dropout_p"] == 0.0 and sdpa_arguments((q,), {"bogus": 1}) is None


def test_answered_calls_keep_torchs_gradients():
    """With gradients on (a notebook's plain ``model(x)``) the calls are answered too, and stay differentiable:
    the output equals a bare forward's to float32 rounding, the gradients an uncaptured backward's."""
    model = _timm()
    x = torch.randn(2, 3, 28, 28)
    xa = x.clone().requires_grad_()
    model(xa).square().sum().backward()
    bare = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    xb = x.clone().requires_grad_()
    with ViTCapture(model) as cap:
        y = model(xb)
        y.square().sum().backward()
    assert cap.site.shared_calls == 2 and len(cap.records) == 2 and y.grad_fn is not None
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, bare[name], rtol=1e-4, atol=1e-5)


def test_non_finite_queries_get_torchs_attention():
    """A NaN the kernels could hide (they assume finite logits) reaches the model's output as in a bare forward."""
    model = _timm()
    with torch.no_grad():
        model.blocks[1].attn.qkv.weight[3, 0] = float("nan")  # one query coordinate of head 0 in layer 1
        x = torch.randn(2, 3, 28, 28)
        bare = model(x)
        with ViTCapture(model) as cap:
            y = model(x)
    assert torch.isnan(bare).any() and torch.equal(torch.isnan(y), torch.isnan(bare))
    assert torch.allclose(y.nan_to_num(), bare.nan_to_num(), rtol=1e-4, atol=1e-5) and len(cap.records) == 2


def test_the_mode_is_left_even_when_the_forward_fails():
    model = _timm()
    with ViTCapture(model) as cap:
        cap.set_valid(torch.ones(5, 28, 28, dtype=torch.bool))  # batch 5 for a batch of 2: the first layer refuses
        with pytest.raises(ValueError, match="valid-pixel mask"):
            model(torch.randn(2, 3, 28, 28))
        assert torch._C._len_torch_function_stack() == 0


def test_hugging_face_sdpa_attention_is_answered_too():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                    patch_size=4, image_size=16, attn_implementation="sdpa")  # fmt: skip
    model = randomize_(transformers.Dinov2Model(cfg), std=0.2).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        bare = model(x).last_hidden_state
        runs = {}
        for share in (True, False):
            with ViTCapture(model, jsd_pairs=10_000, share_softmax=share) as cap:
                runs[share] = (model(x).last_hidden_state, cap.records)
    assert torch.equal(runs[False][0], bare)
    assert torch.allclose(runs[True][0], bare, rtol=1e-4, atol=1e-5) and not torch.equal(runs[True][0], bare)
    for a, b in zip(runs[True][1], runs[False][1]):
        for name in FIELDS:
            assert torch.allclose(getattr(a.stats, name), getattr(b.stats, name), atol=2e-6, equal_nan=True), name


def _stats(records):
    return [{name: getattr(r.stats, name).clone() for name in FIELDS} for r in records]


def _same(a, b, atol=2e-6):
    for ra, rb in zip(a, b, strict=True):
        for name in FIELDS:
            assert torch.allclose(ra[name], rb[name], atol=atol, equal_nan=True), name


def test_a_forward_that_fails_after_attending_leaves_nothing_for_the_next():
    """Review finding: maps measured before a failure must not be reused by the next forward."""
    model = _timm(depth=1)
    x1, x2 = torch.randn(2, 3, 28, 28), torch.randn(2, 3, 28, 28)
    fail = model.blocks[0].attn.proj.register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(RuntimeError("boom")))
    with torch.no_grad(), ViTCapture(model, jsd_pairs=10_000) as cap:  # every pair: no sampling to line up
        with pytest.raises(RuntimeError, match="boom"):
            model(x1)
        fail.remove()
        model(x2)
        assert cap.shared_calls == 2
    with torch.no_grad(), ViTCapture(model, jsd_pairs=10_000, share_softmax=False) as plain:
        model(x2)
    _same(_stats(cap.records), _stats(plain.records))


def test_an_interrupted_forward_leaves_no_mode_behind():
    model = _timm(depth=1)
    stop = model.blocks[0].attn.proj.register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with torch.no_grad(), ViTCapture(model) as cap:
        with pytest.raises(KeyboardInterrupt):  # forward hooks with always_call do not run for a BaseException
            model(torch.randn(1, 3, 28, 28))
    stop.remove()
    assert torch._C._len_torch_function_stack() == 0 and cap.shared_calls == 1
    q, k, v = _qkv(b=1, layout=TokenLayout((2, 2), 1, 0))
    assert torch.equal(F.scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q.clone(), k.clone(), v.clone()))
    assert cap.shared_calls == 1  # a call outside the capture is torch's


def test_a_declined_call_keeps_the_forwards_jsd_pairs():
    """Layers of one forward share their sampled JSD pairs even where a call went to torch."""
    model = _timm(depth=2)
    with torch.no_grad():
        model.blocks[1].attn.qkv.weight[3, 0] = float("nan")  # layer 1, head 0: its output is not finite, declined
        x = torch.randn(2, 3, 28, 28)
        runs = []
        for share in (True, False):
            with ViTCapture(model, jsd_pairs=8, share_softmax=share) as cap:
                model(x)
            runs.append((_stats(cap.records), cap.shared_calls))
    assert runs[0][1] == 1 and runs[1][1] == 0  # layer 0 answered, layer 1 declined
    assert runs[0][0][1]["att_jsd"][:, 1:4].isfinite().all()  # heads 1-3 of layer 1 are measured: same pairs
    _same(runs[0][0], runs[1][0])


def test_calls_with_a_scale_torch_accepts_but_the_kernels_do_not_go_to_torch(monkeypatch):
    import timm.layers.attention as timm_attention

    real = F.scaled_dot_product_attention
    monkeypatch.setattr(timm_attention, "F", type("F", (), {"scaled_dot_product_attention": staticmethod(
        lambda q, k, v, **kw: real(q, k, v, scale=-0.1, **kw))}))  # fmt: skip
    model = _timm(depth=1)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        bare = model(x)
        with ViTCapture(model) as cap:
            assert torch.equal(model(x), bare)
    assert cap.shared_calls == 0 and len(cap.records) == 1


def test_families_that_do_not_call_sdpa_run_untouched():
    """torchvision's MultiheadAttention (its fast path needs no active torch function mode) and timm's
    unfused path: bit-identical to a bare forward, nothing answered, and run.json says torch."""
    tv = pytest.importorskip("torchvision.models.vision_transformer")
    torchvision_vit = randomize_(tv.VisionTransformer(image_size=28, patch_size=7, num_layers=2, num_heads=4,
                                                      hidden_dim=32, mlp_dim=64), std=0.2).eval()  # fmt: skip
    unfused = _timm()
    for blk in unfused.blocks:
        blk.attn.fused_attn = False
    x = torch.randn(2, 3, 28, 28)
    for model in (torchvision_vit, unfused):
        with torch.no_grad():
            bare = model(x)
            with ViTCapture(model) as cap:
                assert torch.equal(model(x), bare)
        assert cap.shared_calls == 0 and len(cap.records) == 2
    from nlanalysis.extract import ViTAnalysis

    assert ViTAnalysis(unfused, size=28).describe()["model_attention"] == "torch"
    assert ViTAnalysis(_timm(), size=28).describe()["model_attention"].startswith("shared softmax in 2 of 2 layers")


def test_row_kernel_probs_layouts():
    """One head, several images: a slice of rows is read and written in place; probs strided otherwise is refused."""
    buf = torch.randn(3, 1, 6, 5)
    rows = buf[:, :, 1:]
    want = torch.softmax(rows.double() * 0.5, -1).float()
    kernels.row_stats(rows, None, None, 1, 1, scale=0.5, probs=rows)
    assert torch.allclose(rows, want, rtol=2e-6, atol=1e-9)
    logits = torch.randn(2, 3, 5, 5)
    with pytest.raises(ValueError, match="strided as the logits"):
        kernels.row_stats(logits, None, None, 1, 1, probs=logits.transpose(2, 3))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_token_is_still_refused_with_the_shared_softmax(value):
    """The record skips its own finiteness pass over the tokens only after an answered call (a finite output
    shows every token's q, k and v finite): one non-finite entry in one token of layer 1's input makes that
    call decline, and the record names the layer and the problem, as without sharing."""
    model = _timm(depth=2)
    x = torch.randn(1, 3, 28, 28)

    def spoil(mod, args):  # layer 1's input: one entry of one token
        t = args[0].clone()
        t[0, 3, 5] = value
        return (t,)

    for share in (True, False):
        handle = model.blocks[1].attn.register_forward_pre_hook(spoil)
        try:
            with torch.no_grad(), ViTCapture(model, jsd_pairs=0, share_softmax=share) as cap:
                with pytest.raises(ValueError, match=r"blocks\.1\.attn.*tokens contain NaN or inf"):
                    model(x)
            assert cap.shared_calls == (1 if share else 0)  # layer 0 answered, layer 1 declined
        finally:
            handle.remove()
