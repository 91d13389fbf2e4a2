"""The statistics on a CUDA device: the same numbers as scipy / the CPU, the maps reduced on the device
and only per-image numbers (and per-query index vectors) copied back to the host, in ``measure_block``,
``analyze`` of NL and ViT models (``controls=True`` too: the ViT controls are built from the tokens on the
device) and ``extract``'s ViT locality. Runs only where torch sees a CUDA GPU (``python benchmarks/capture.py
--device cuda`` times the same path; ``tests/test_host_copies.py`` checks on the CPU which copies the code asks for)."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from helpers import randomize_
from host_copies import HostCopies
from naive import mean_cos_dist_all_pairs
from nlanalysis import analyze
from nlanalysis.blocks import PAIRWISE_MODES, NonLocal2d
from nlanalysis.measure import measure_block
from nlanalysis.metrics import mean_pairwise_cosine_distance

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")

FIELDS = ("input", "output", "att", "att_jsd", "att_jsd_stderr", "att_entropy", "att_max", "att_zero_rows", "input_zero",
          "output_zero", "att_own_object", "own_object_share", "n_query", "n_key")  # fmt: skip


def test_cosine_distance_on_the_device_equals_pdist():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 400, 33, generator=g)
    v[0, :7] = 0  # zero vectors: excluded
    v[1, 5] = 1e-30  # tiny and huge rows: the robust path
    v[2, 9] = 1e30
    got = mean_pairwise_cosine_distance(v.cuda(), chunk_size=64).cpu()
    for b in range(3):
        rows = v[b].double().numpy()
        keep = np.abs(rows).sum(1) > 0
        assert got[b].item() == pytest.approx(mean_cos_dist_all_pairs(rows[keep]), abs=1e-9)


@pytest.mark.parametrize("mode", PAIRWISE_MODES)
def test_block_statistics_on_the_device_equal_the_cpu(mode, monkeypatch):
    block = randomize_(NonLocal2d(8, mode=mode, sub_sample=mode == "concatenation"), std=0.4).eval()
    x = torch.randn(2, 8, 12, 14)
    valid = torch.ones(2, 12, 14, dtype=torch.bool)
    valid[1, :, 10:] = False
    with torch.no_grad():
        cpu = measure_block(block.attention(x), x, block(x) - x, valid=valid, jsd_pairs=64, chunk_size=16,
                            generator=torch.Generator().manual_seed(4), kernels="eager")  # fmt: skip
        block, xc, vc = block.cuda(), x.cuda(), valid.cuda()
        att, context = block.attention(xc), block(xc) - xc
        copies = HostCopies(monkeypatch, only_cuda=True)
        gpu = measure_block(att, xc, context, valid=vc, jsd_pairs=64, chunk_size=16, generator=torch.Generator().manual_seed(4))
    monkeypatch.undo()
    one_map = att.n_query * att.n_key
    assert copies.sizes and max(copies.sizes) < one_map / 4, "a map (or a large part of one) was copied to the host"
    for name in FIELDS:
        want, got = getattr(cpu, name), getattr(gpu, name)
        assert got.device.type == "cpu" and got.shape == want.shape, name
        assert torch.allclose(got.double(), want.double(), atol=1e-5, rtol=0, equal_nan=True), (name, got, want)


def test_exact_jsd_on_the_device_equals_scipy():
    block = randomize_(NonLocal2d(6, mode="embedded_gaussian")).eval().cuda()
    x = torch.randn(1, 6, 3, 4, device="cuda")
    with torch.no_grad():
        stats = measure_block(block.attention(x), x, block(x) - x, jsd_pairs=10_000)
        rows = block.attention_maps(x)[0].double().cpu().numpy()
    naive = np.mean([[jensenshannon(p, q, base=2) ** 2 for q in rows] for p in rows])
    assert stats.att_jsd[0].item() == pytest.approx(naive, abs=1e-9)
    assert stats.att_jsd_stderr[0].item() == 0.0 and not math.isnan(stats.att_entropy[0].item())


def _same_rows(cpu: pd.DataFrame, gpu: pd.DataFrame) -> None:
    """The frames of a CPU and a GPU run: the same rows and columns, numbers to float32 rounding of the maps."""
    assert list(gpu.columns) == list(cpu.columns) and len(gpu) == len(cpu)
    for name in cpu.columns:
        if pd.api.types.is_numeric_dtype(cpu[name]):
            np.testing.assert_allclose(gpu[name].to_numpy(float), cpu[name].to_numpy(float), rtol=1e-4, atol=1e-4, equal_nan=True, err_msg=name)
        elif name != "peak_offsets":  # argmax: a near tie may round to the other key
            assert (gpu[name] == cpu[name]).all(), name


@pytest.mark.parametrize("options", [{}, {"controls": True}], ids=["default", "controls"])
def test_analyze_nl_on_the_device_equals_the_cpu(options, monkeypatch):
    from test_cross_site import TwoBlocks
    from test_host_copies import _inputs

    model = randomize_(TwoBlocks(), std=0.3).eval()
    x, valid = _inputs(10, 12)
    cpu = analyze(model, x, valid=valid, **options)
    model.cuda()
    copies = HostCopies(monkeypatch, only_cuda=True)
    gpu = analyze(model, x.cuda(), valid=valid, **options)  # the mask on the CPU: it goes where the maps are
    monkeypatch.undo()
    assert max(copies.sizes) < 2 * 16 * 10 * 12, "a block's input or map was copied to the host"
    _same_rows(cpu, gpu)


@pytest.mark.parametrize("options", [{}, {"controls": True}], ids=["default", "controls"])
def test_analyze_vit_on_the_device_equals_the_cpu(options, monkeypatch):
    from test_host_copies import _inputs, _vit

    model = _vit()
    x, valid = _inputs(64, 64)
    cpu = analyze(model, x, valid=valid, **options)
    model.cuda()
    copies = HostCopies(monkeypatch, only_cuda=True)
    gpu = analyze(model, x.cuda(), valid=valid.cuda(), **options)  # the controls: the same draws, on the device
    monkeypatch.undo()
    # a layer's tokens (the controls' input) are as large as its q: copied, they fail this (the controls' per-query
    # float values are tests/test_host_copies.py's; here per-query masks and index vectors of any type count too)
    assert max(copies.sizes) < 2 * 2 * 257 * 32, "tokens, queries, keys or maps were copied to the host"
    if options:
        assert gpu["ctrl_att"].notna().all() and gpu["ctrl_form_att"].notna().all()
    _same_rows(cpu, gpu)


def test_extract_vit_locality_on_the_device_equals_the_cpu(monkeypatch):
    from nlanalysis.extract import ViTAnalysis
    from test_host_copies import _inputs, _vit

    x, valid = _inputs(64, 64)
    analysis = ViTAnalysis(_vit(), size=64)
    frames = []
    for device in ("cpu", "cuda"):
        analysis.model.to(device)
        copies = HostCopies(monkeypatch, only_cuda=True)
        with torch.no_grad(), analysis.capture(queries=None, seed=0, jsd_pairs=64, chunk_size=None, controls=False) as cap:
            cap.set_valid(valid.to(device))
            analysis.model(x.to(device))
        frames.append(analysis.frame(cap.records, 2, valid.to(device)))
        monkeypatch.undo()
    assert max(copies.sizes) < 2 * 2 * 257 * 32, "queries, keys or maps were copied to the host"
    _same_rows(*frames)
    assert (frames[0]["peak_offsets"] == frames[1]["peak_offsets"]).mean() > 0.9
