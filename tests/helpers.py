import torch

from nlanalysis.blocks import ContextBlock, NonLocal2d


def randomize_(module: torch.nn.Module, std: float = 0.3, seed: int = 1234) -> torch.nn.Module:
    """Give every parameter and BN statistic non-trivial values so equality tests can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    return module


def excluded_queries(maps) -> int:
    """How many (query, block) pairs of one saved maps file (``ImageMaps``) fall in a query-grid
    cell the statistics exclude: a cell whose centre pixel is not image (``valid_cells``)."""
    import numpy as np

    from nlanalysis.capture import valid_cells

    y0, y1, x0, x1 = maps.region
    valid = torch.zeros(1, *(int(v) for v in maps["input_size"]), dtype=torch.bool)
    valid[0, y0:y1, x0:x1] = True
    bad = 0
    for i in range(len(maps.blocks)):
        keep = valid_cells(valid, tuple(int(v) for v in maps[f"query_shape_{i}"]))[0].numpy()
        cells = np.asarray(maps[f"cells_{i}"])
        bad += int((~keep[cells[:, 0], cells[:, 1]]).sum())
    return bad


class NLGCNet(torch.nn.Module):
    """Stride-4 stem, an NL block, a GC block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.nl = NonLocal2d(8, mode="embedded_gaussian", sub_sample=True)
        self.gc = ContextBlock(8, 0.5)

    def forward(self, x):
        return self.gc(self.nl(self.stem(x)))
