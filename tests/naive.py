"""Independent, loop-level reference computations used by the tests (slow, obvious, small N)."""
import numpy as np
import torch
from scipy.spatial.distance import pdist, squareform


def conv1x1(weight: torch.Tensor, bias: torch.Tensor | None, v: np.ndarray) -> np.ndarray:
    """Apply a 1x1 conv to position vectors v [N, C_in] -> [N, C_out] in float64."""
    w = weight.detach().double().numpy().reshape(weight.shape[0], -1)
    out = v @ w.T
    if bias is not None:
        out = out + bias.detach().double().numpy()
    return out


def nl_attention(mode: str, q: np.ndarray, k: np.ndarray, scale: float = 1.0, w_concat: np.ndarray | None = None) -> np.ndarray:
    """Row-by-row NL attention from query vectors q [N, C] and key vectors k [Nk, C]."""
    n, nk = len(q), len(k)
    out = np.zeros((n, nk))
    for i in range(n):
        if mode == "concatenation":
            for j in range(nk):
                out[i, j] = max(0.0, float(w_concat @ np.concatenate([q[i], k[j]]))) / nk
        else:
            logits = np.array([q[i] @ k[j] for j in range(nk)])
            if mode == "dot_product":
                out[i] = logits / nk
            else:
                logits = logits * scale
                e = np.exp(logits - logits.max())
                out[i] = e / e.sum()
    return out


def maxpool2(v: np.ndarray) -> np.ndarray:
    """2x2 max-pool (floor) of [C, H, W]."""
    c, h, w = v.shape
    h2, w2 = h // 2, w // 2
    return v[:, : 2 * h2, : 2 * w2].reshape(c, h2, 2, w2, 2).max(axis=(2, 4))


def mean_cos_dist_all_pairs(v: np.ndarray) -> float:
    """GCNet's 1/N^2 sum_ij (1 - cos): scipy's pdist with the zero diagonal included."""
    d = squareform(pdist(v, "cosine"))
    return float(d.mean())
