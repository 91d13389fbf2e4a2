"""The statistics on a CUDA device: the same numbers as scipy / the CPU, the maps reduced on the device
and only per-image numbers (and per-query index vectors) copied back to the host. Runs only where
torch sees a CUDA GPU (``python benchmarks/capture.py --device cuda`` times the same path)."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from helpers import randomize_
from naive import mean_cos_dist_all_pairs
from nlanalysis.blocks import PAIRWISE_MODES, NonLocal2d
from nlanalysis.measure import measure_block
from nlanalysis.metrics import mean_pairwise_cosine_distance

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")

FIELDS = ("input", "output", "att", "att_jsd", "att_jsd_stderr", "att_entropy", "att_max", "att_zero_rows", "input_zero",
          "output_zero", "att_own_object", "own_object_share", "n_query", "n_key")  # fmt: skip


class HostCopies:
    """Counts the elements of every CUDA tensor copied to the host (``.cpu()``, ``.to("cpu")``, ``.item()``,
    ``.tolist()``, ``.numpy()``) while open: the largest single copy must stay far below one map."""

    def __init__(self, monkeypatch):
        self.sizes = []
        for name in ("cpu", "to", "item", "tolist"):
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._spy(real, name))

    def _spy(self, real, name):
        def wrapped(t, *args, **kwargs):
            if t.is_cuda and (name != "to" or _to_host(args, kwargs)):
                self.sizes.append(t.numel())
            return real(t, *args, **kwargs)

        return wrapped


def _to_host(args, kwargs) -> bool:
    target = kwargs.get("device", args[0] if args else None)
    return isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu"


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
        copies = HostCopies(monkeypatch)
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
