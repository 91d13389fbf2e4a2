"""The GCNet statistics of one ViT layer, per head and for the head mean, in one pass.

The statistics are those of :mod:`nlanalysis.measure` (Cao et al., "GCNet", arXiv 1904.11492,
Sec. 3, Table 1: mean pairwise cosine distance over all ordered pairs of positions, i = j
included), computed for every head of a layer at once instead of one head at a time:

* ``input``  -- the layer's input tokens ``x_i`` (the residual stream entering the transformer
  block; the attention module's own input when the block is not known), patch tokens only. The
  same for every head.
* ``output`` -- what the attention branch adds before the residual add. Per head: head ``h``'s
  share ``gamma * W_h o_h,i`` of the output projection (``W_h``: the projection's columns of head
  ``h``; ``o_h,i``: what the projection sees from head ``h``; ``gamma``: LayerScale, if any; the
  projection bias belongs to no head and is left out). For the head mean: the whole branch
  ``gamma * (W o_i + b)`` (= ``z_i - x_i``).
* ``att``    -- query ``i``'s map over the keys (patch keys, or every token with ``keys="all"``).
  Per head: head ``h``'s map. For the head mean: ``mean_h A_h``, the head-averaged map.

and the diagnostics: ``att_jsd`` (mean pairwise Jensen-Shannon divergence of query maps, bits,
from ``jsd_pairs`` sampled ordered pairs -- exact when there are no more pairs than that -- with
its standard error), ``att_entropy`` (normalised by ``log N_key``), ``att_max``, ``att_zero_rows``,
``input_zero`` / ``output_zero`` (all-zero vectors, excluded by the default zero rule), and
``att_prefix_mass`` (mean weight a patch query puts on class/register tokens; the softmax runs over
every token, so with ``keys="patch"`` rows are renormalised over patch keys before entropy, max
weight and JSD, exactly as :func:`nlanalysis.measure.measure_block` does with masked keys).

Rules shared with :func:`~nlanalysis.measure.measure_block` (tests check the two agree head by
head): ``valid`` marks image (non-padding) patches, dropped as queries and keys; zero vectors
follow the metric's ``zero`` rule; entropy/max/JSD run over non-zero rows. Costs: per-head output
distances use the Gram matrices ``G_h = W_h^T diag(gamma)^2 W_h`` (``||gamma W_h o||^2 = o^T G_h o``),
so no per-head ``[N, C]`` output is ever formed; JSD uses ``H(m) - (H(p) + H(q)) / 2`` with the
rows' entropies from the main pass, in float32 (absolute error about 1e-6 bits); for JSD pairs
involving an all-zero row of some head (possible only when all of a query's weight underflows
onto class/register keys) that head averages the remaining pairs.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from ..metrics import distance_from_sum
from .. import kernels as _native
from ..blocks.heads import HeadAttention
from ..blocks.tokens import KEY_SETS, TokenLayout

__all__ = ["KERNELS", "HeadStats", "HeadsBatch", "MapStats", "attend", "gram_matrices", "heads_batch", "measure_heads", "uses_native"]

_LN2 = math.log(2.0)


@dataclass
class HeadStats:
    """Statistics of one layer on a batch; tensor fields are ``[B, heads + 1]`` (last: head mean).

    Attributes:
        input, output, att, att_jsd, att_jsd_stderr, att_entropy, att_max, att_zero_rows,
        input_zero, output_zero, att_prefix_mass: see the module docstring.
        att_own_object, own_object_share: with object labels (:func:`heads_batch` ``objects``): the
            mean share of a row's mass on keys of the query's own object, over non-zero rows of
            queries on an object, and that object's share of the valid keys (what uniform attention
            gives), as :func:`nlanalysis.measure.measure_block`; NaN without labels.
        n_query, n_key: ``[B]`` valid patch queries and keys.
        keys: ``"patch"`` or ``"all"``; convention, zero_rule: of the cosine distance.
        controls: the random-projection control at matched sharpness per head
            (:func:`nlanalysis.measure.head_controls.head_controls`: ``ctrl_att``, ...), or ``None``.
    """

    input: Tensor
    output: Tensor
    att: Tensor
    att_jsd: Tensor
    att_jsd_stderr: Tensor
    att_entropy: Tensor
    att_max: Tensor
    att_zero_rows: Tensor
    input_zero: Tensor
    output_zero: Tensor
    att_prefix_mass: Tensor
    att_own_object: Tensor
    own_object_share: Tensor
    n_query: Tensor
    n_key: Tensor
    keys: str
    convention: str
    zero_rule: str
    controls: dict[str, Tensor] | None = None

    @property
    def num_heads(self) -> int:
        return self.att.shape[1] - 1

    def per_image_head(self) -> list[list[dict[str, float | int | str]]]:
        """``rows[b][h]``: plain dicts, ``h = heads`` being the head mean."""
        out = []
        for b in range(self.att.shape[0]):
            per_head = []
            for h in range(self.att.shape[1]):
                row: dict[str, float | int | str] = {}
                for f in fields(self):
                    value = getattr(self, f.name)
                    if f.name == "controls":
                        row.update({k: v[b, h].item() for k, v in (value or {}).items()})
                        continue
                    if isinstance(value, Tensor):
                        value = (value[b, h] if value.dim() == 2 else value[b]).item()
                    row[f.name] = value
                per_head.append(row)
            out.append(per_head)
        return out


def gram_matrices(weight: Tensor, num_heads: int, gamma: Tensor | None = None) -> Tensor:
    """``G_h = W_h^T diag(gamma)^2 W_h`` ``[heads, d, d]`` of an output projection ``W [C, heads*d]``."""
    w = weight.detach().double()
    if gamma is not None:
        w = w * gamma.detach().double()[:, None]
    c, hd = w.shape
    wh = w.reshape(c, num_heads, hd // num_heads).permute(1, 0, 2)  # [H, C, d]
    return wh.transpose(1, 2) @ wh


def _cosine_result(s2: Tensor, n_total: Tensor, n_zero: Tensor, cos: dict) -> Tensor:
    """The mean pairwise cosine distance from ``||sum of unit vectors||^2`` and counts, with the rules
    (conventions, zero vectors, too few vectors) of :class:`nlanalysis.metrics.CosineAccumulator`."""
    s2 = s2.detach().double().cpu()
    return distance_from_sum(s2, n_total.cpu().long().expand(s2.shape), n_zero.cpu().long(), **cos)


def _token_stats(
    xp: Tensor, bp: Tensor, op: Tensor | None, gram: Tensor | None, qm: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``||sum_i v_i / ||v_i|| ||^2`` and all-zero counts, ``[B, 2 + H]``: input, branch, then per head.

    Args:
        xp, bp: ``[B, n, C]`` patch tokens of the input and of the attention branch.
        op: ``[B, n, H*d]`` what the output projection sees (per-head outputs), or None.
        gram: ``[H, d, d]`` float32 Gram matrices ``G_h`` (``||gamma W_h o||^2 = o^T G_h o``).
        qm: ``[B, n]`` float, 1 on valid queries (None: all).

    Per head, ``sum_i u_i / ||u_i||`` with ``u_i = gamma W_h o_i`` is ``gamma W_h t`` for
    ``t = sum_i o_i / ||u_i||``, whose squared norm is ``t^T G_h t``: no ``[n, C]`` per-head output
    is ever formed. float32 throughout (relative error ~1e-7).
    """

    def unit_sum(v: Tensor, n2: Tensor) -> tuple[Tensor, Tensor]:  # v [..., n, D], n2 = ||v||^2 [..., n]
        is_zero = n2 <= 0
        w = torch.where(is_zero, 0.0, n2.clamp(min=1e-38).rsqrt())
        if qm is not None:
            mask = qm if v.dim() == 3 else qm[:, None]
            w, is_zero = w * mask, is_zero & (mask > 0)
        return (w.unsqueeze(-2) @ v).squeeze(-2), is_zero.sum(-1)

    s2, zeros = [], []
    for v in (xp, bp):
        sv, zv = unit_sum(v, (v * v).sum(-1))
        s2.append((sv * sv).sum(-1, keepdim=True))
        zeros.append(zv[:, None])
    if op is not None and gram is not None:
        b, n, hd = op.shape
        o = op.reshape(b, n, gram.shape[0], -1).transpose(1, 2)  # [B, H, n, d]
        t, zh = unit_sum(o, ((o @ gram) * o).sum(-1))  # t [B, H, d]
        s2.append(((t.unsqueeze(-2) @ gram).squeeze(-2) * t).sum(-1))
        zeros.append(zh)
    return torch.cat(s2, 1), torch.cat(zeros, 1)


@dataclass(eq=False)
class HeadsBatch:
    """What :func:`measure_heads` needs per batch that no layer changes (:func:`heads_batch`).

    Attributes:
        layout, keys, size: the token layout, key set and batch size it was built for.
        qmask: ``[B, n_patch]`` bool valid patch queries, or None (all); qm: the same as float32.
        km: ``[B, 1, 1, K]`` float32 key weights (1 valid, 0 padding), or None (all).
        n_query, n_key: ``[B]`` (CPU, int64) valid queries and keys; n_query_f: ``[B, 1]`` float64;
        log_k: ``[B, 1]`` float64 ``log max(n_key, 2)`` (entropy normaliser).
        plan: the JSD pairs, or None (``jsd_pairs=0``); sel: ``[B, n_patch]`` row of each planned
            query in the plan's table (``-1``: none), for the native kernels.
        device: where the masks and pairs live (the maps' device).
        objects: ``(query_labels [B, n_patch], key_labels [B, K], query_share [B, n_patch])`` from
            object labels: each valid query's object (0: none), each valid key's (-1: none; class
            and register keys belong to none), the share of valid keys on the query's object.
    """

    layout: TokenLayout
    keys: str
    size: int
    qmask: Tensor | None
    qm: Tensor | None
    km: Tensor | None
    n_query: Tensor
    n_key: Tensor
    n_query_f: Tensor
    log_k: Tensor
    plan: _Plan | None
    sel: Tensor | None
    device: torch.device
    objects: tuple[Tensor, Tensor, Tensor] | None = None


def heads_batch(
    layout: TokenLayout,
    keys: str,
    size: int,
    valid: Tensor | None = None,
    *,
    jsd_pairs: int = 64,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    objects: Tensor | None = None,
) -> HeadsBatch:
    """Masks, counts and JSD pairs (per image, ordered pairs of valid queries: all of them when
    ``jsd_pairs`` is at least their number, else ``jsd_pairs`` uniform draws) for a batch of
    ``size`` images, shared by every layer of one forward (:func:`measure_heads` ``batch=``).

    Args:
        layout: the token layout; keys: ``"patch"`` or ``"all"``.
        valid: optional bool ``[B, H_g, W_g]``: True on image patches (False on padding).
        jsd_pairs, generator: as :func:`measure_heads`.
        objects: optional int ``[B, H_g, W_g]`` object labels of the patches (0: no object), for
            ``att_own_object`` / ``own_object_share``.
    """
    if keys not in KEY_SETS:
        raise ValueError(f"keys must be one of {KEY_SETS}, got {keys!r}")
    dev = torch.device(device)
    b, prefix, nq = size, layout.n_prefix, layout.n_patch
    qmask = kmask = qm = km = None
    if valid is not None:
        if tuple(valid.shape) != (b, *layout.grid):
            raise ValueError(f"valid mask must be [B, H_g, W_g] = {(b, *layout.grid)}, got {tuple(valid.shape)}")
        qmask = valid.to(device=dev, dtype=torch.bool).flatten(1)
        kmask = qmask if keys == "patch" else torch.cat([qmask.new_ones(b, prefix), qmask], 1)
        qm, km = qmask.float(), kmask[:, None, None, :].float()
    n_key_all = nq if keys == "patch" else layout.n_tokens
    n_query = qmask.sum(1).cpu() if qmask is not None else torch.full((b,), nq)
    n_key = kmask.sum(1).cpu() if kmask is not None else torch.full((b,), n_key_all)
    plan = _jsd_plan(qmask, nq, b, jsd_pairs, generator, dev)
    sel = None
    if plan is not None and dev.type == "cpu":
        sel = torch.full((b, nq), -1, dtype=torch.long)
        sel[plan.image, plan.query] = torch.arange(plan.query.numel())
    labels = None
    if objects is not None:
        if tuple(objects.shape) != (b, *layout.grid):
            raise ValueError(f"object labels must be [B, H_g, W_g] = {(b, *layout.grid)}, got {tuple(objects.shape)}")
        ql = objects.to(device=dev, dtype=torch.int64).flatten(1)  # [B, n_patch]
        kl = ql if keys == "patch" else torch.cat([ql.new_zeros(b, prefix), ql], 1)
        if qmask is not None:
            ql = torch.where(qmask, ql, 0)
            kl = torch.where(kmask, kl, -1)
        kl = torch.where(kl > 0, kl, -1)  # background and class/register keys belong to no object
        same = (kl[:, None, :] == ql[:, :, None]).sum(-1)  # [B, n_patch]: valid keys on the query's object
        share = torch.where(ql > 0, same / n_key.to(dev)[:, None], 0.0).float()
        labels = (ql, kl, share)
    return HeadsBatch(
        layout, keys, b, qmask, qm, km, n_query, n_key, n_query.double()[:, None],
        torch.log(n_key.double().clamp(min=2))[:, None], plan, sel, dev, labels,
    )  # fmt: skip


@torch.no_grad()
def measure_heads(
    att: HeadAttention,
    x: Tensor,
    branch: Tensor,
    *,
    proj_in: Tensor | None = None,
    gram: Tensor | None = None,
    valid: Tensor | None = None,
    chunk_size: int | None = None,
    jsd_pairs: int = 64,
    generator: torch.Generator | None = None,
    convention: str = "1-cos",
    zero: str = "exclude",
    kernels: str = "auto",
    batch: HeadsBatch | None = None,
    branch_scale: Tensor | None = None,
    objects: Tensor | None = None,
    maps: MapStats | None = None,
) -> HeadStats:
    """Compute :class:`HeadStats` for one layer on a batch.

    Args:
        att: the layer's per-head maps.
        x: ``[B, N, C]`` input tokens (residual stream), all ``N`` tokens.
        branch: ``[B, N, C]`` the attention branch's contribution (LayerScale included).
        proj_in: ``[B, N, heads * d]`` what the output projection sees; with ``gram``, gives the
            per-head ``output`` (NaN without).
        gram: :func:`gram_matrices` of the output projection (LayerScale folded in).
        valid: optional bool ``[B, H_g, W_g]``: True on image patches (False on padding).
        chunk_size: patch queries per chunk of rows (peak extra memory ``~ 3 B heads chunk N`` floats
            eager, ``B heads chunk N`` native); default: the most whose ``[B, heads, chunk, N]`` maps
            hold at most 2**20 floats (4 MiB, a core's cache: smaller chunks run measurably faster on
            CPU than one big one) eager, 2**22 native (its kernel works row by row in L1).
        jsd_pairs: query pairs sampled per image for the JSD (0 disables it: NaN).
        generator: RNG for the pair sampling.
        convention, zero: of :func:`nlanalysis.metrics.mean_pairwise_cosine_distance`.
        kernels: ``"native"``: the one-pass CPU kernels of :mod:`nlanalysis.kernels` (built on
            first use with the system C compiler, ~0.3 s, cached on disk; a warning and eager
            PyTorch where they cannot be built or the maps are not on the CPU); ``"eager"``: PyTorch
            ops (any device); ``"auto"`` (default): native where it can be, quietly. Same numbers to
            float32 rounding (tests compare them); see :func:`uses_native`.
        branch_scale: ``[C]`` LayerScale still to apply to ``branch`` (its contribution is
            ``branch * branch_scale``): the native kernels then make no scaled copy of it.
        batch: what the layers of one forward share (:func:`heads_batch`: masks, counts, JSD pairs,
            object labels), built once per forward by :class:`~nlanalysis.vit.ViTCapture`; then
            ``valid``, ``objects``, ``jsd_pairs`` and ``generator`` come from it (and the layers use
            the same JSD pairs).
        objects: optional int ``[B, H_g, W_g]`` object labels of the patches (0: no object):
            ``att_own_object`` and ``own_object_share`` (NaN without).
        maps: the map statistics :func:`attend` already computed for ``att`` (then ``batch`` is
            theirs); only the token statistics are computed here.
    """
    layout = att.layout
    b, heads = att.batch_size, att.num_heads
    dev = att.device
    for name, t in (("x", x), ("branch", branch)):
        layout.check(t.shape[1], name)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    cos = dict(convention=convention, zero=zero)
    if maps is not None:
        if batch is not None and batch is not maps.batch:
            raise ValueError("maps= were measured with another batch= than the one given")
        batch = maps.batch
    if batch is None:
        batch = heads_batch(layout, att.keys, b, valid, jsd_pairs=jsd_pairs, generator=generator, device=dev, objects=objects)
    elif valid is not None or objects is not None:
        raise ValueError("give the valid mask and object labels to heads_batch, not with batch=")
    elif (batch.layout, batch.keys, batch.size, batch.device) != (layout, att.keys, b, torch.device(dev)):
        raise ValueError(
            f"batch= was built for {batch.size} images, keys {batch.keys!r}, {batch.layout} on {batch.device}; "
            f"these maps are {b} images, keys {att.keys!r}, {layout} on {dev}"
        )
    qmask, plan = batch.qmask, batch.plan
    # the kernels take float32 logits; other dtypes (and maps given as probabilities) run eager
    native = uses_native(kernels, dev) and att.probs is None and att.query.dtype == torch.float32

    # input and output distances (token vectors)
    qm = batch.qm
    heads_out = proj_in is not None and gram is not None
    tokens = (
        layout.patch_tokens(x.detach()), layout.patch_tokens(branch.detach()),
        layout.patch_tokens(proj_in.detach()) if heads_out else None, gram.to(dev).float() if heads_out else None, qm,
    )  # fmt: skip
    if native:
        scale = branch_scale.detach() if branch_scale is not None else None
        s2, zeros = _native.token_stats(*(t.float() if t is not None else None for t in tokens), branch_scale=scale)
    else:
        if branch_scale is not None:
            tokens = (tokens[0], tokens[1] * branch_scale.detach().to(tokens[1]), *tokens[2:])
        s2, zeros = _token_stats(*tokens)

    km = batch.km
    if km is not None and att.probs is not None:
        km = km.to(att.probs.dtype)
    if maps is not None:
        s_att, sums, jsd_values = maps.s_att, maps.sums, maps.jsd
    elif native:
        s_att, sums, jsd_values = _native_rows(att, km, qmask, batch, chunk_size)
    else:
        s_att, sums, jsd_values = _eager_rows(att, km, qmask, plan, chunk_size, batch.objects)

    sums = sums.cpu()
    # every cosine distance of the layer in one call: input, branch, per-head outputs, then att per head and mean
    s2, zeros = s2.double().clamp(min=0).cpu(), zeros.cpu()
    dist = _cosine_result(
        torch.cat([s2, s_att.double().square().sum(-1).cpu()], 1), batch.n_query[:, None], torch.cat([zeros, sums[3].long()], 1), cos
    )  # fmt: skip
    inp, input_zero = dist[:, 0], zeros[:, 0]
    out = torch.full((b, heads + 1), math.nan, dtype=torch.float64)
    out_zero = torch.zeros(b, heads + 1, dtype=torch.int64)
    out[:, heads], out_zero[:, heads] = dist[:, 1], zeros[:, 1]
    if heads_out:
        out[:, :heads], out_zero[:, :heads] = dist[:, 2 : 2 + heads], zeros[:, 2:]
    att_dist = dist[:, -(heads + 1) :]
    nz = sums[2]
    att_entropy = sums[0] / batch.log_k / nz
    att_max = sums[1] / nz
    att_zero = 1.0 - nz / batch.n_query_f
    prefix_mass = sums[4] / batch.n_query_f
    nan = torch.full_like(sums[5], math.nan)
    own = torch.where(sums[7] > 0, sums[5] / sums[7], nan) if batch.objects is not None else nan
    own_share = torch.where(sums[7] > 0, sums[6] / sums[7], nan) if batch.objects is not None else nan
    jsd, jsd_err = _jsd(plan, jsd_values, b, heads)
    return HeadStats(
        inp[:, None].expand(b, heads + 1).clone(), out, att_dist, jsd, jsd_err, att_entropy, att_max, att_zero,
        input_zero[:, None].expand(b, heads + 1).clone(), out_zero, prefix_mass, own, own_share,
        batch.n_query.clone(), batch.n_key.clone(), att.keys, convention, zero,  # each layer's own tensors
    )  # fmt: skip


@dataclass
class MapStats:
    """The map statistics of one layer that :func:`attend` computed during the forward, for
    :func:`measure_heads` (``maps=``): sums of unit rows, row sums, JSD values, and the
    :class:`HeadsBatch` they were computed with."""

    s_att: Tensor
    sums: Tensor
    jsd: tuple[Tensor, Tensor, Tensor] | None
    batch: HeadsBatch


@torch.no_grad()
def attend(att: HeadAttention, value: Tensor, batch: HeadsBatch, chunk_size: int | None = None) -> tuple[Tensor, MapStats]:
    """The layer's attention output and its map statistics from one softmax (native kernels).

    ``softmax(scale * q k^T) @ value`` over every token, as ``F.scaled_dot_product_attention``
    computes it (no mask, no dropout), while the kernel of :func:`measure_heads` measures the patch
    queries' rows: a captured forward then computes each layer's softmax once instead of twice.
    Equal to the fused kernel's output to float32 rounding (tests compare them).

    Args:
        att: the layer's maps (``keys`` and layout as for :func:`measure_heads`), float32 on the CPU.
        value: ``[B, heads, N, d_v]`` values.
        batch: :func:`heads_batch` for these maps.
        chunk_size: as :func:`measure_heads`.

    Returns:
        ``(output, maps)``: ``output`` ``[B, heads, N, d_v]`` (a view of a ``[B, N, heads, d_v]``
        tensor, the layout torch's fused CPU attention returns), and :class:`MapStats` for
        :func:`measure_heads` ``maps=``.

    Raises:
        RuntimeError: the native kernels are unavailable (:func:`uses_native`).
    """
    layout = att.layout
    b, heads, n = att.batch_size, att.num_heads, layout.n_tokens
    if value.dim() != 4 or tuple(value.shape[:3]) != (b, heads, n):
        raise ValueError(f"value must be [B, heads, N, d_v] with (B, heads, N) = {(b, heads, n)}, got {tuple(value.shape)}")
    if not (uses_native("auto", att.device) and att.query.dtype == torch.float32 and value.dtype == torch.float32):
        raise RuntimeError("attend needs the native kernels and float32 CPU tensors (see uses_native)")
    if (batch.layout, batch.keys, batch.size, batch.device) != (layout, att.keys, b, torch.device(att.device)):
        raise ValueError(f"batch= was built for {batch.size} images, keys {batch.keys!r}, {batch.layout}; these maps differ")
    out = torch.empty(b, n, heads, value.shape[3])
    s_att, sums, jsd = _native_rows(att, batch.km, batch.qmask, batch, chunk_size, attend_to=(value, out))
    return out.transpose(1, 2), MapStats(s_att, sums, jsd, batch)


KERNELS = ("auto", "native", "eager")


def uses_native(choice: str, device: torch.device | str = "cpu") -> bool:
    """Whether :func:`measure_heads` with ``kernels=choice`` runs the native kernels for maps on
    ``device`` (building them now if needed; ``"native"`` warns once when it cannot)."""
    if choice not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {choice!r}")
    if choice == "eager":
        return False
    if torch.device(device).type == "cpu" and _native.available():
        return True
    if choice == "native" and not _WARNED:
        _WARNED.append(True)
        why = _native.why_unavailable() or f"maps on {torch.device(device)}, the kernels are for the CPU"
        warnings.warn(f"native ViT statistics kernels unavailable ({why}); using eager PyTorch", stacklevel=3)
    return False


_WARNED: list[bool] = []


def _native_chunk(att: HeadAttention, chunk_size: int | None) -> int:
    nq = att.layout.n_patch
    if chunk_size is None:  # the kernel reads each row once, in L1: only the logits buffer is bounded
        chunk_size = max(8, (1 << 22) // (att.batch_size * att.num_heads * att.layout.n_tokens))
    return min(chunk_size, nq)


def _native_rows(
    att: HeadAttention,
    km: Tensor | None,
    qmask: Tensor | None,
    batch: HeadsBatch,
    chunk_size: int | None,
    attend_to: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor] | None]:
    """Every map statistic of the layer with :func:`nlanalysis.kernels.row_stats`, chunk by chunk
    of patch queries (one BLAS matmul for the logits, one kernel pass over them), and the JSD of the
    plan's pairs per image (count, mean, variance) with :func:`~nlanalysis.kernels.pair_jsd`.
    With ``attend_to = (value [B, heads, N, d_v], out [B, N, heads, d_v])``, the kernel also leaves
    each chunk's softmax in place and every token's attention output ``softmax @ value`` goes to ``out``."""
    b, heads, nq = att.batch_size, att.num_heads, att.layout.n_patch
    first, prefix = (att.layout.n_prefix if att.keys == "patch" else 0), att.layout.n_prefix
    kw = km.reshape(b, -1) if km is not None else None
    plan, rows = batch.plan, None
    if plan is not None and batch.sel is not None:  # the rows the JSD pairs need: a table row per planned (image, query)
        size = plan.query.numel()
        rows = (batch.sel, _native.workspace("jsd_rows", (size, heads + 1, att.n_key)), torch.empty(size, heads + 1),
                torch.zeros(size, heads + 1, dtype=torch.uint8))  # fmt: skip
    step = _native_chunk(att, chunk_size)
    s_att, sums = None, None
    attending = attend_to is not None
    value, out = attend_to if attend_to is not None else (None, None)
    for start in range(0, nq, step):
        stop = min(start + step, nq)
        # q . k straight from the model's own (strided) q and k, image by image, into a reused buffer (a
        # fresh multi-MiB tensor costs its page faults every layer); the kernel applies the scale.
        # Attending, the first chunk also holds the class/register queries' rows (token rows lo:hi).
        lo, hi = (0 if attending and start == 0 else prefix + start), prefix + stop
        logits = _native.workspace("logits", (b, heads, hi - lo, att.key.shape[2]))
        for i in range(b):
            torch.matmul(att.query[i, :, lo:hi], att.key[i].transpose(-2, -1), out=logits[i])
        pre = prefix + start - lo  # class/register rows in this chunk: only softmaxed, for the model
        part = None if rows is None else (rows[0][:, start:stop], *rows[1:])
        m = qmask[:, start:stop] if qmask is not None else None
        obj = None
        if batch.objects is not None:
            ql, kl, share = batch.objects
            obj = (ql[:, start:stop], kl, share[:, start:stop])
        probs = logits if attending else None  # the kernel leaves the softmax in place
        s_c, sums_c = _native.row_stats(logits, kw, m, first, prefix, part, scale=att.scale, objects=obj, probs=probs, pre=pre)
        s_att, sums = (s_c, sums_c) if s_att is None else (s_att + s_c, sums + sums_c)
        if attending:
            out[:, lo:hi].copy_(torch.matmul(logits, value).transpose(1, 2))
    values = None
    if plan is not None and rows is not None:
        values = _native.pair_jsd(rows[1], rows[2], rows[3], plan.a, plan.b, plan.pair_image, b)  # per image
    return s_att, sums, values


def _eager_rows(
    att: HeadAttention,
    km: Tensor | None,
    qmask: Tensor | None,
    plan: _Plan | None,
    chunk_size: int | None,
    objects: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """As :func:`_native_rows`, in eager PyTorch (any device): :func:`_chunk_stats` chunk by chunk."""
    b, heads, nq, prefix = att.batch_size, att.num_heads, att.layout.n_patch, att.layout.n_prefix
    dev = att.device
    if chunk_size is None:
        chunk_size = max(8, 2 ** int(math.log2(max(1, (1 << 20) // (b * heads * att.layout.n_tokens)))))
    first = prefix if att.keys == "patch" else 0
    s_att = torch.zeros(b, heads + 1, att.n_key, dtype=torch.float64, device=dev)  # sum of unit rows
    sums = torch.zeros(8, b, heads + 1, dtype=torch.float64, device=dev)  # entropy, max, non-zero, zero, prefix, own object x3
    table = table_ent = None
    for start in range(0, nq, chunk_size):
        stop = min(start + chunk_size, nq)
        m = qmask[:, None, start:stop] if qmask is not None else None
        if att.probs is None:  # scale * q of these patch queries, and every key (contiguous copies made once per layer)
            q, probs = att.scaled_query(slice(start, stop)), None
        else:
            q, probs = None, att.probs_rows(slice(start, stop))  # the model's own softmax
        sel_b = sel_c = inside = None
        if plan is not None:  # the rows of this chunk the JSD pairs need
            inside = ((plan.query >= start) & (plan.query < stop)).nonzero()[:, 0]
            sel_b, sel_c = plan.image[inside], plan.query[inside] - start
        obj = None if objects is None else (objects[0][:, start:stop], objects[1], objects[2][:, start:stop])
        s_chunk, chunk_sums, rows, rows_ent = _chunk_stats(q, att.key, probs, km, m, sel_b, sel_c, first, prefix, obj)
        s_att += s_chunk.double()
        sums += chunk_sums.double()
        if plan is not None:
            if table is None:
                table = rows.new_zeros(plan.query.numel(), *rows.shape[1:])
                table_ent = rows_ent.new_full((plan.query.numel(), rows_ent.shape[1]), math.nan)
            table[inside], table_ent[inside] = rows, rows_ent
    values = None
    if plan is not None and table is not None:
        values = torch.cat([_pair_jsd(table, table_ent, plan.a[i : i + 8192], plan.b[i : i + 8192])
                            for i in range(0, plan.a.numel(), 8192)])  # fmt: skip
    return s_att, sums, values


def _chunk_stats(
    q: Tensor | None,
    k: Tensor,
    probs: Tensor | None,
    km: Tensor | None,
    m: Tensor | None,
    sel_b: Tensor | None,
    sel_c: Tensor | None,
    first: int,
    prefix: int,
    objects: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The statistics of a chunk of patch queries, every head and the head mean at once (eager).

    Args:
        q: ``[B, H, c, d]`` scaled queries of the chunk (None when ``probs`` is given); k: ``[B, H, N, d]``.
        probs: ``[B, H, c, N]`` softmax rows given by the caller instead of q (read only).
        km: ``[B, 1, 1, K]`` key weights (1 valid, 0 padding) or None; m: ``[B, 1, c]`` valid queries.
        sel_b, sel_c: image and chunk-row of the rows to return normalised (for the JSD), or None.
        first: first key column used (``n_prefix`` for patch keys, 0 for all); prefix: ``n_prefix``.
        objects: the chunk's query labels ``[B, c]``, key labels ``[B, K]`` and query shares ``[B, c]``
            (:class:`HeadsBatch` ``objects``), or None.

    Returns:
        ``s`` (``[B, H+1, K]``: sum of the valid non-zero rows as unit vectors), ``sums``
        (``[8, B, H+1]``: entropy of the renormalised rows in nats, largest weight, non-zero rows,
        zero rows, mass on class/register tokens, summed over valid queries; then, over non-zero
        rows of queries on an object, the share of mass on that object, the object's share of keys,
        and their count), and the selected rows
        renormalised ``[S, H+1, K]`` with their entropies ``[S, H+1]`` (NaN for zero rows).
    """
    b, heads = k.shape[0], k.shape[1]
    # as few passes over [B, H, c, N] as possible, each one a vectorised ATen kernel
    if probs is None:
        d = torch.matmul(q, k.transpose(-2, -1))  # raw logits: sum r log p = sum r l - t (max l + log Z)
        top, where = d.max(-1, keepdim=True)
        p = torch.softmax(d, -1)
        logz = (top - p.gather(-1, where).log()).squeeze(-1)  # log-sum-exp: p at the argmax is exp(max - lse)
        if km is not None:
            p[..., first:] *= km  # padded keys weigh nothing (p is ours)
    else:
        p, d, logz = probs, None, None
        if km is not None:
            p = torch.cat([p[..., :first], p[..., first:] * km], -1)  # the model's own softmax stays as it is
    # the head mean as a GEMV over heads: a strided mean over dim 1 is several times slower in eager mode
    pmean = (p.new_full((1, heads), 1.0 / heads) @ p.reshape(b, heads, -1)).reshape(b, 1, p.shape[2], -1)
    r, rm = p[..., first:], pmean[..., first:]
    t_h = r.sum(-1)
    total = torch.cat([t_h, t_h.mean(1, keepdim=True)], 1)  # the mean row's mass is the mean of the heads'
    peak = torch.cat([r.amax(-1), rm.amax(-1)], 1)
    # a row is all zero unless some weight is a normal float (as in the native kernels, which flush denormals)
    ok = peak >= torch.finfo(peak.dtype).tiny
    ok = ok if m is None else ok & m
    tt = torch.where(ok, total, 1.0)
    if d is not None:
        rlogr_h = torch.linalg.vecdot(r, d[..., first:]) - t_h * logz  # sum r log p
    else:
        rlogr_h = torch.special.xlogy(r, r).sum(-1)
    rlogr_m = torch.special.xlogy(rm, rm).sum(-1)
    ent = torch.log(tt) - torch.cat([rlogr_h, rlogr_m], 1) / tt
    # norms accumulated in float64: squares of weights below ~1e-19 underflow in float32
    norm = torch.cat([torch.linalg.vector_norm(r, dim=-1, dtype=torch.float64), torch.linalg.vector_norm(rm, dim=-1, dtype=torch.float64)], 1)
    w = torch.where(ok, 1.0 / norm.clamp(min=1e-300), 0.0).to(p.dtype)  # unit rows (norm >= peak: finite); zero rows add nothing
    w_h, w_m = w[:, :heads], w[:, heads:]
    # contiguous full rows: GEMV without copying, drop the prefix columns after
    s = torch.cat([(w_h.unsqueeze(-2) @ p).squeeze(-2), (w_m.unsqueeze(-2) @ pmean).squeeze(-2)], 1)[..., first:]
    valid = torch.ones_like(ok) if m is None else m.expand_as(ok)
    if prefix:
        pre = p[..., :prefix].sum(-1)
        pre = torch.cat([pre, pre.mean(1, keepdim=True)], 1)
    else:
        pre = torch.zeros_like(tt)
    own_sums = [torch.zeros_like(tt[..., 0])] * 3
    if objects is not None:
        ql, kl, share = objects
        same = ((kl[:, None, :] == ql[:, :, None]) & (ql[:, :, None] > 0))[:, None].to(r.dtype)  # [B, 1, c, K]
        own = torch.cat([(r * same).sum(-1), (rm * same).sum(-1)], 1) / tt
        on = ok & (ql[:, None, :] > 0)
        own_sums = [torch.where(on, own, 0.0).sum(-1), torch.where(on, share[:, None, :].to(tt.dtype), 0.0).sum(-1),
                    on.sum(-1).to(tt.dtype)]  # fmt: skip
    sums = torch.stack(
        [
            torch.where(ok, ent, 0.0).sum(-1),
            torch.where(ok, peak / tt, 0.0).sum(-1),
            ok.sum(-1).to(tt.dtype),
            (valid & ~ok).sum(-1).to(tt.dtype),
            torch.where(valid, pre, 0.0).sum(-1),
            *own_sums,
        ]
    )
    rows = rows_ent = None
    if sel_b is not None:
        rows = torch.cat([r[sel_b, :, sel_c], rm[sel_b, :, sel_c]], 1) / tt[sel_b, :, sel_c][..., None]
        rows_ent = torch.where(ok[sel_b, :, sel_c], ent[sel_b, :, sel_c], math.nan)
    return s, sums, rows, rows_ent


@dataclass
class _Plan:
    """JSD pairs of a batch: the query rows to keep (``image``, ``query``: one entry per row), and the
    pairs as positions in that list (``a``, ``b``) with their image."""

    image: Tensor
    query: Tensor
    a: Tensor
    b: Tensor
    pair_image: Tensor
    exact: Tensor  # [B] bool: all pairs of that image were used


def _jsd_plan(
    qmask: Tensor | None, nq: int, b: int, jsd_pairs: int, generator: torch.Generator | None, dev: torch.device
) -> _Plan | None:
    """As :func:`nlanalysis.metrics.mean_pairwise_jsd_sampled`: ordered pairs with i = j allowed,
    all ``n^2`` of them when ``jsd_pairs >= n^2``, else ``jsd_pairs`` uniform draws, per image."""
    if jsd_pairs <= 0:
        return None
    num = max(jsd_pairs, 2)
    images, queries, pa, pb, pimg, exact = [], [], [], [], [], torch.zeros(b, dtype=torch.bool)
    offset = 0
    for i in range(b):
        index = qmask[i].nonzero()[:, 0].cpu() if qmask is not None else torch.arange(nq)
        n = index.numel()
        if n == 0:
            continue
        if num >= n * n:
            qi, qj = (g.reshape(-1) for g in torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"))
            exact[i] = True
        else:
            qi = torch.randint(n, (num,), generator=generator)
            qj = torch.randint(n, (num,), generator=generator)
        uniq, inverse = torch.unique(torch.cat([qi, qj]), return_inverse=True)
        images.append(torch.full((uniq.numel(),), i))
        queries.append(index[uniq])
        pa.append(inverse[: qi.numel()] + offset)
        pb.append(inverse[qi.numel() :] + offset)
        pimg.append(torch.full((qi.numel(),), i))
        offset += uniq.numel()
    if not images:
        return None
    cat = lambda ts: torch.cat(ts).to(dev)  # noqa: E731
    return _Plan(cat(images), cat(queries), cat(pa), cat(pb), cat(pimg), exact)


def _pair_jsd(table: Tensor, table_ent: Tensor, a: Tensor, c: Tensor) -> Tensor:
    """JSD (bits) of row pairs ``(a, c)`` of normalised rows ``table`` ``[U, H+1, K]`` -> ``[P, H+1]``."""
    m = (table[a] + table[c]) * 0.5  # [P, H+1, K]
    h_m = -torch.special.xlogy(m, m).sum(-1)
    return ((h_m - 0.5 * (table_ent[a] + table_ent[c])) / _LN2).clamp(0.0, 1.0)


def _jsd(plan: _Plan | None, values: Tensor | tuple[Tensor, Tensor, Tensor] | None, b: int, heads: int) -> tuple[Tensor, Tensor]:
    """Mean JSD (bits) over each image's pairs, and its standard error (0 where every pair was used).

    ``values``: the pairs' values ``[P, heads+1]`` (NaN for pairs with an all-zero row), or already
    per image ``(count, mean, variance)`` ``[B, heads+1]`` each (the native kernel's).
    """
    jsd = torch.full((b, heads + 1), math.nan, dtype=torch.float64)
    err = jsd.clone()
    if plan is None or values is None:
        return jsd, err
    if isinstance(values, tuple):
        count, mean, var = values
    else:
        v = values.double().cpu()
        img = plan.pair_image.cpu()
        ok = v == v
        v0 = torch.where(ok, v, 0.0)
        count = torch.zeros(b, heads + 1, dtype=torch.float64).index_add_(0, img, ok.double())
        mean = torch.zeros(b, heads + 1, dtype=torch.float64).index_add_(0, img, v0) / count
        sq = torch.where(ok, (v - mean[img]) ** 2, 0.0)
        var = torch.zeros(b, heads + 1, dtype=torch.float64).index_add_(0, img, sq) / (count - 1).clamp(min=1)
    jsd = torch.where(count > 0, mean, math.nan)
    err = torch.where(plan.exact[:, None], torch.where(count > 0, 0.0, math.nan), var.sqrt() / count.sqrt())
    return jsd, err
