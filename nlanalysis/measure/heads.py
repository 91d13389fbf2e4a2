"""The statistics (:class:`~nlanalysis.measure.stats.SiteStats`) of one ViT layer, every head and the
head mean, in one pass, with the rules of :mod:`.blocks` (tests check the two agree head by head).

* ``input``  -- the layer's input tokens (the residual stream entering the transformer block; the
  attention module's own input when the block is not known), patch tokens only; the same per head.
* ``output`` -- per head, head ``h``'s share ``gamma * W_h o_h,i`` of the output projection
  (``W_h``: its columns of head ``h``; ``gamma``: LayerScale, if any; the bias belongs to no head);
  for the head mean, the whole branch ``gamma * (W o_i + b)`` (= ``z_i - x_i``).
* ``att``    -- query ``i``'s map over the keys (patch keys, or every token with ``keys="all"``): head
  ``h``'s, or the head-averaged map ``mean_h A_h``. ``att_prefix_mass`` is the weight a patch query
  puts on class/register tokens; with ``keys="patch"`` rows are renormalised over patch keys before
  entropy, max weight and JSD, as :func:`nlanalysis.measure.measure_block` does with masked keys.

Costs: per-head output distances use the Gram matrices ``G_h = W_h^T diag(gamma)^2 W_h``
(``||gamma W_h o||^2 = o^T G_h o``), so no per-head ``[N, C]`` output is ever formed; JSD uses
``H(m) - (H(p) + H(q)) / 2`` with the rows' entropies from the main pass, in float32 (absolute error
about 1e-6 bits); for JSD pairs involving an all-zero row of some head (possible only when all of a
query's weight underflows onto class/register keys) that head averages the remaining pairs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..metrics import distance_from_sum
from ..nograd import detached, no_grad
from .. import kernels as _native
from ..kernels import KERNELS, uses_native
from .head_rows import _eager_rows, _native_head_rows
from .head_suite import HeadSuite
from .query_dep import CROSS_SITE, EXPENSIVE, SiteMaps, check_level, head_maps
from .query_dep import query_dependence as query_dep
from .stats import SiteStats, nans, row_results
from .jsd_pairs import _jsd, _jsd_plan, _Plan
from ..blocks.heads import HeadAttention
from ..blocks.tokens import KEY_SETS, TokenLayout

__all__ = ["KERNELS", "HeadStats", "HeadsBatch", "MapStats", "attend", "gram_matrices", "heads_batch", "key_mask", "measure_heads", "uses_native"]

#: the statistics of a ViT layer: :class:`~nlanalysis.measure.stats.SiteStats` with ``[B, heads + 1]``
#: per-map fields (last: the head mean), ``att_prefix_mass`` and ``keys``; the controls
#: (:func:`nlanalysis.measure.head_controls.head_controls`) go to its ``controls``.
HeadStats = SiteStats


def gram_matrices(weight: Tensor, num_heads: int, gamma: Tensor | None = None) -> Tensor:
    """``G_h = W_h^T diag(gamma)^2 W_h`` ``[heads, d, d]`` of an output projection ``W [C, heads*d]``."""
    w = weight.detach().double()
    if gamma is not None:
        w = w * gamma.detach().double()[:, None]
    c, hd = w.shape
    wh = w.reshape(c, num_heads, hd // num_heads).permute(1, 0, 2)  # [H, C, d]
    return wh.transpose(1, 2) @ wh


def _token_stats(
    xp: Tensor, bp: Tensor, op: Tensor | None, gram: Tensor | None, qm: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``||sum_i v_i / ||v_i|| ||^2`` and all-zero counts, ``[B, 2 + H]``: input, branch, then per head.

    ``xp``, ``bp``: ``[B, n, C]`` patch tokens of the input and of the attention branch; ``op``: ``[B, n, H*d]``
    what the output projection sees, or None; ``gram``: ``[H, d, d]`` float32 ``G_h``; ``qm``: ``[B, n]`` float,
    1 on valid queries (None: all). Per head, ``sum_i u_i / ||u_i||`` with ``u_i = gamma W_h o_i`` is ``gamma W_h t`` for
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
        memo: tensors derived from these masks once per batch by the layers that share it (e.g. the suite's
            float64 masks and counts, :class:`~.head_suite.HeadSuite`); read, never written into.
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
    memo: dict = field(default_factory=dict, repr=False)


def key_mask(batch: HeadsBatch) -> Tensor | None:
    """``[B, K]`` bool the batch's valid keys (``None``: all), made once per batch (in its memo)."""
    if "key mask" not in batch.memo:
        batch.memo["key mask"] = batch.km[:, 0, 0].bool() if batch.km is not None else None
    return batch.memo["key mask"]


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
    ``size`` images, shared by every layer of one forward (:func:`measure_heads` ``batch=``). ``keys``:
    ``"patch"`` or ``"all"``; the other arguments as :func:`measure_heads`'s.
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
    sel = plan.table_rows(b, nq) if plan is not None and dev.type == "cpu" else None
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


@no_grad
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
    query_dependence: str = "off",
    stride: tuple[float, float] | None = None,
    suite: HeadSuite | None = None,
) -> HeadStats:
    """Compute :class:`HeadStats` for one layer on a batch.

    Args:
        x, branch: ``[B, N, C]`` input tokens (residual stream) and the attention branch's contribution
            (LayerScale included), all ``N`` tokens.
        proj_in, gram: ``[B, N, heads * d]`` what the output projection sees and :func:`gram_matrices` of
            it (LayerScale folded in): the per-head ``output`` (NaN without).
        valid, objects: optional ``[B, H_g, W_g]``: bool, True on image patches (False on padding); int
            object labels of the patches (0: no object), for ``att_own_object`` and ``own_object_share``.
        chunk_size: patch queries per chunk of rows (peak extra memory ``~ 3 B heads chunk N`` floats
            eager, ``B heads chunk N`` native); default: the most whose ``[B, heads, chunk, N]`` maps
            hold at most 2**20 floats (4 MiB, a core's cache: smaller chunks run measurably faster on
            CPU than one big one) eager, 2**22 native (its kernel works row by row in L1).
        jsd_pairs, generator: query pairs sampled per image for the JSD (0 disables it: NaN), and their RNG.
        convention, zero: of :func:`nlanalysis.metrics.mean_pairwise_cosine_distance`.
        kernels: ``"native"``: the one-pass CPU kernels of :mod:`nlanalysis.kernels` (a warning and eager
            PyTorch where they cannot be built or the maps are not on the CPU); ``"eager"``: PyTorch ops (any
            device); ``"auto"`` (default): native where it can be, quietly. Same numbers to float32 rounding
            (tests compare them); see :func:`uses_native`.
        branch_scale: ``[C]`` LayerScale still to apply to ``branch`` (the native kernels then make no
            scaled copy of it).
        batch: what the layers of one forward share (:func:`heads_batch`), built once per forward by
            :class:`~nlanalysis.vit.ViTCapture`; then ``valid``, ``objects``, ``jsd_pairs`` and ``generator``
            come from it (and the layers use the same JSD pairs).
        maps: the map statistics :func:`attend` already computed for ``att`` (then ``batch`` is
            theirs); only the token statistics are computed here.
        query_dependence: ``"off"`` (default), ``"cheap"`` or ``"all"``: the query-dependence suite of
            every head and the head mean: the cheap columns from one pass over the layer's rows
            (:class:`~.head_suite.HeadSuite`; with the native kernels, all but ``cross_site_cos`` from the
            kernel's own pass, :mod:`.native_suite`), the expensive ones (``"all"``) from :mod:`.query_dep`
            (the same cheap columns at both levels).
        stride: input pixels per patch ``(y, x)``, for ``att_distance_px`` (``None``: NaN).
        suite: the layer's :class:`~.head_suite.HeadSuite` (made for ``att`` with the batch's masks and
            ``stride``; fed by :func:`attend`, or fed here), e.g. with the previous layer's rows for
            ``cross_site_cos`` (in ``suite.values``); made here when the suite is on and none is given.
    """
    layout = att.layout
    for name, t in (("x", x), ("branch", branch)):
        layout.check(t.shape[1], name)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batch = _layer_batch(att, batch, maps, valid, objects, jsd_pairs, generator)
    # the kernels take float32 logits; other dtypes (and maps given as probabilities) run eager
    built = uses_native(kernels, att.device)  # then the statistics' last step is native too (_head_stats)
    native = built and att.probs is None and att.query.dtype == torch.float32
    s2, zeros = _token_sums(att, batch, x, branch, proj_in, gram, branch_scale, native)
    km = batch.km
    if km is not None and att.probs is not None:
        km = km.to(att.probs.dtype)
    level = check_level(query_dependence)
    kmask = key_mask(batch) if level != "off" else None
    if level != "off":
        suite = suite or HeadSuite(att, batch.qmask, kmask, stride, memo=batch.memo)
    if maps is not None:
        s_att, sums, jsd_values = maps.s_att, maps.sums, maps.jsd
    elif native:  # with the suite's sums from the same pass (its rows are fed after, for cross_site_cos)
        sums_of = suite.native_sums(chunk_size) if suite is not None and not suite.fed and suite.native is None else None
        s_att, sums, jsd_values = _native_head_rows(att, km, batch.qmask, batch, chunk_size, suite=sums_of)
    else:
        s_att, sums, jsd_values = _eager_rows(att, km, batch.qmask, batch.plan, chunk_size, batch.objects)
    cos = dict(convention=convention, zero=zero)
    stats = _head_stats(att, batch, s2, zeros, s_att, sums.cpu(), jsd_values, proj_in is not None and gram is not None, cos, built)
    if level != "off":
        _add_suite(stats, suite, level, head_maps(att, batch.qmask, kmask, stride) if level == "all" else None, cos)
    return stats


def _add_suite(stats: HeadStats, suite: HeadSuite, level: str, maps: SiteMaps | None, cos: dict) -> None:
    """Set the suite's columns (but ``cross_site_cos``) on ``stats``: the cheap ones from ``suite`` (run here
    unless fed), the expensive ones (``level="all"``: the rank-1 fit and the gain-only maps) from the
    general suite's passes over ``maps``; the cosine distances in ``cos`` (the ``convention`` and ``zero`` of ``att``)."""
    if not suite.fed:
        suite.run()
    columns = suite.result(cos)
    if level == "all":
        expensive = query_dep(maps, level, cos)
        columns.update({name: expensive[name] for name in EXPENSIVE})
    for name, value in columns.items():
        if name != CROSS_SITE:
            setattr(stats, name, value)


def _layer_batch(att: HeadAttention, batch: HeadsBatch | None, maps: MapStats | None, valid: Tensor | None,
                 objects: Tensor | None, jsd_pairs: int, generator: torch.Generator | None) -> HeadsBatch:  # fmt: skip
    """The :class:`HeadsBatch` ``att`` is measured with: ``maps``'s, the one given (checked against
    ``att``), or a new one from ``valid``, ``objects`` and the JSD pair settings."""
    layout, b, dev = att.layout, att.batch_size, att.device
    if maps is not None:
        if batch is not None and batch is not maps.batch:
            raise ValueError("maps= were measured with another batch= than the one given")
        batch = maps.batch
    if batch is None:
        return heads_batch(layout, att.keys, b, valid, jsd_pairs=jsd_pairs, generator=generator, device=dev, objects=objects)
    if valid is not None or objects is not None:
        raise ValueError("give the valid mask and object labels to heads_batch, not with batch=")
    return _check_batch(batch, att)


def _check_batch(batch: HeadsBatch, att: HeadAttention) -> HeadsBatch:
    """``batch``, if it was built for ``att``'s maps (ValueError otherwise)."""
    if batch.layout is att.layout and batch.keys == att.keys and batch.size == att.batch_size and batch.device == att.device:
        return batch  # the usual case, every layer: the layout object the batch was built from
    b, dev = att.batch_size, torch.device(att.device)
    if (batch.layout, batch.keys, batch.size, batch.device) != (att.layout, att.keys, b, dev):
        raise ValueError(
            f"batch= was built for {batch.size} images, keys {batch.keys!r}, {batch.layout} on {batch.device}; "
            f"these maps are {b} images, keys {att.keys!r}, {att.layout} on {dev}"
        )
    return batch


def _token_sums(att: HeadAttention, batch: HeadsBatch, x: Tensor, branch: Tensor, proj_in: Tensor | None,
                gram: Tensor | None, branch_scale: Tensor | None, native: bool) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Squared norms of the summed unit vectors and zero counts ``[B, 2 (+ heads)]`` of the patch
    tokens: input, branch, and (with ``proj_in`` and ``gram``) each head's output share."""
    layout = att.layout
    heads_out = proj_in is not None and gram is not None
    tokens = (
        layout.patch_tokens(detached(x)), layout.patch_tokens(detached(branch)),
        layout.patch_tokens(detached(proj_in)) if heads_out else None, gram.to(att.device, torch.float32) if heads_out else None, batch.qm,
    )  # fmt: skip
    if native:  # float32 already on the usual path: a .float() per tensor would be a dispatched no-op each
        scale = detached(branch_scale) if branch_scale is not None else None
        return _native.token_stats(*[t if t is None or t.dtype == torch.float32 else t.float() for t in tokens], branch_scale=scale)
    if branch_scale is not None:
        tokens = (tokens[0], tokens[1] * branch_scale.detach().to(tokens[1]), *tokens[2:])
    return _token_stats(*tokens)


def _head_stats(att: HeadAttention, batch: HeadsBatch, s2: Tensor, zeros: Tensor, s_att: Tensor, sums: Tensor,
                jsd_values: Tensor | tuple[Tensor, Tensor, Tensor] | None, heads_out: bool, cos: dict,
                native: bool = False) -> HeadStats:  # fmt: skip
    """:class:`HeadStats` from the token sums, the row sums ``sums`` ``[8, B, heads+1]`` (CPU) and the
    JSD pair values; every cosine distance of the layer in one call: with ``native`` (the kernels
    built, CPU inputs, JSD as per-image moments or none) one native call
    (:func:`nlanalysis.kernels.head_finalise`), else PyTorch (the reference)."""
    # the native step takes rows summed on the CPU, the JSD as per-image moments or none, and known rules
    if native and s_att.is_cpu and not isinstance(jsd_values, Tensor) and cos["convention"] in _FINAL_CONVENTIONS \
            and cos["zero"] in _FINAL_ZERO_RULES:  # fmt: skip
        return _native_head_stats(att, batch, s2, zeros, s_att, sums, jsd_values, heads_out, cos)
    b, heads = att.batch_size, att.num_heads
    # input, branch, per-head outputs, then att per head and mean
    s2, zeros = s2.double().clamp(min=0).cpu(), zeros.cpu()
    s2 = torch.cat([s2, s_att.double().square().sum(-1).cpu()], 1)  # rules of nlanalysis.metrics.CosineAccumulator
    dist = distance_from_sum(s2, batch.n_query[:, None].long().expand(s2.shape), torch.cat([zeros, sums[3].long()], 1).long(), **cos)
    inp, input_zero = dist[:, 0], zeros[:, 0]
    out = nans(b, heads + 1)
    out_zero = torch.zeros(b, heads + 1, dtype=torch.int64)
    out[:, heads], out_zero[:, heads] = dist[:, 1], zeros[:, 1]
    if heads_out:
        out[:, :heads], out_zero[:, :heads] = dist[:, 2 : 2 + heads], zeros[:, 2:]
    jsd, jsd_err = _jsd(batch.plan, jsd_values, b, heads)
    return SiteStats(
        input=inp[:, None].expand(b, heads + 1).clone(), output=out, att=dist[:, -(heads + 1) :], att_jsd=jsd,
        att_jsd_stderr=jsd_err, input_zero=input_zero[:, None].expand(b, heads + 1).clone(), output_zero=out_zero,
        **row_results(sums, batch.n_query_f, batch.log_k, batch.objects is not None), n_query=batch.n_query.clone(),
        n_key=batch.n_key.clone(), convention=cos["convention"], zero_rule=cos["zero"], att_prefix_mass=sums[4] / batch.n_query_f,
        keys=att.keys,  # each layer's own tensors
    )  # fmt: skip


# what _native_head_stats takes (the torch path raises for other names)
_FINAL_CONVENTIONS = ("1-cos", "(1-cos)/2")
_FINAL_ZERO_RULES = ("exclude", "orthogonal", "raise")


def _native_head_stats(att: HeadAttention, batch: HeadsBatch, s2: Tensor, zeros: Tensor, s_att: Tensor, sums: Tensor,
                       jsd_values: tuple[Tensor, Tensor, Tensor] | None, heads_out: bool, cos: dict) -> HeadStats:  # fmt: skip
    """:func:`_head_stats` in one native call; the fields are views of its ``[11, B, heads+1]`` output."""
    zero = cos["zero"]
    if zero == "raise":  # distance_from_sum's own check (and message) on the totals: no zero vector, then as "exclude"
        zero_rows = sums[3].long()
        total = batch.n_query.long().sum() * (s2.shape[1] + zero_rows.shape[1])
        distance_from_sum(torch.zeros(()), total, zeros.sum() + zero_rows.sum(), **cos)
        zero = "exclude"
    plan = batch.plan
    moments = jsd_values if plan is not None else None
    out, out_zero = _native.head_finalise(
        s2, zeros, s_att, sums, batch.n_query_f, batch.log_k, moments, plan.exact if moments is not None else None,
        heads_out=heads_out, objects=batch.objects is not None, convention=cos["convention"], zero=zero,
    )  # fmt: skip
    inp, output, dist, jsd, jsd_err, entropy, peak, zero_rows, own, share, prefix = out.unbind(0)  # FINAL_FIELDS
    input_zero, output_zero = out_zero.unbind(0)
    return SiteStats(
        input=inp, output=output, att=dist, att_jsd=jsd, att_jsd_stderr=jsd_err, att_entropy=entropy, att_max=peak,
        att_zero_rows=zero_rows, input_zero=input_zero, output_zero=output_zero, att_own_object=own, own_object_share=share,
        n_query=batch.n_query.clone(), n_key=batch.n_key.clone(), convention=cos["convention"], zero_rule=cos["zero"],
        att_prefix_mass=prefix, keys=att.keys,
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


@no_grad
def attend(att: HeadAttention, value: Tensor, batch: HeadsBatch, chunk_size: int | None = None,
           suite: HeadSuite | None = None) -> tuple[Tensor, MapStats]:  # fmt: skip
    """The layer's attention output and its map statistics from one softmax (native kernels).

    ``softmax(scale * q k^T) @ value`` over every token, as ``F.scaled_dot_product_attention``
    computes it (no mask, no dropout), while the kernel of :func:`measure_heads` measures the patch
    queries' rows: a captured forward then computes each layer's softmax once instead of twice.
    Equal to the fused kernel's output to float32 rounding (tests compare them).

    ``att``: float32 CPU maps (RuntimeError without the native kernels); ``value``: ``[B, heads, N, d_v]``;
    ``batch``: :func:`heads_batch` for these maps; ``suite``: a :class:`~.head_suite.HeadSuite` for ``att``, fed
    this pass's softmax (its rows for ``cross_site_cos``; the other columns from the kernel's own sums,
    :meth:`~.head_suite.HeadSuite.native_sums`), then ``measure_heads(suite=)``. Returns ``output``
    ``[B, heads, N, d_v]`` (a view of a ``[B, N, heads, d_v]`` tensor, as torch's fused CPU attention
    returns) and the :class:`MapStats` for ``measure_heads(maps=)``.
    """
    layout = att.layout
    b, heads, n = att.batch_size, att.num_heads, layout.n_tokens
    if value.dim() != 4 or tuple(value.shape[:3]) != (b, heads, n):
        raise ValueError(f"value must be [B, heads, N, d_v] with (B, heads, N) = {(b, heads, n)}, got {tuple(value.shape)}")
    if not (uses_native("auto", att.device) and att.query.dtype == torch.float32 and value.dtype == torch.float32):
        raise RuntimeError("attend needs the native kernels and float32 CPU tensors (see uses_native)")
    _check_batch(batch, att)
    out = torch.empty(b, n, heads, value.shape[3])
    s_att, sums, jsd = _native_head_rows(att, batch.km, batch.qmask, batch, chunk_size, attend_to=(value, out),
                                         on_rows=suite.update if suite is not None else None,
                                         suite=suite.native_sums(chunk_size) if suite is not None else None)  # fmt: skip
    return out.transpose(1, 2), MapStats(s_att, sums, jsd, batch)
