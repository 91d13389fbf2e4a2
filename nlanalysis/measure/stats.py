"""The statistics of one attention site on a batch, whatever the site: an NL/GC block (one map) or a
ViT layer (every head, then the head mean).

Cao et al., "GCNet", arXiv 1904.11492, Sec. 3 (Table 1): the average distance over all ordered
pairs of positions (i = j included) of ``input`` (the site's input features ``x_i``), ``output``
(what the site adds before fusion, ``z_i - x_i``) and ``att`` (query ``i``'s map over the keys), with
cosine distance ``1 - cos`` by default; beside them, what kind of attention was learned: the mean
pairwise Jensen-Shannon divergence of query maps (sampled pairs, with its standard error), their
normalised entropy, mean largest weight, the fraction of all-zero rows, and the attention mass a
query on an object puts on that object (:mod:`.blocks` states the rules, :mod:`.heads` the ViT parts).

Every per-map field is ``[B, M]``: ``M = 1`` for an NL/GC block, ``heads + 1`` for a ViT layer
(the last map is the head mean, ``head ==`` :data:`~nlanalysis.schema.HEAD_MEAN`). A field a site
does not have is ``None`` and gives no column (``att_prefix_mass``, ``keys`` for NL blocks;
``query_independent`` for ViT layers; the ``ctrl_*`` fields where no control was asked for).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from ..metrics import distance_from_sum, mean_pairwise_cosine_distance
from ..schema import HEAD_MEAN, names

__all__ = ["CONTROLS", "CONTROL_FIELDS", "SiteStats", "cosine_distance", "nans", "row_results"]

#: the control fields, as the columns of :mod:`nlanalysis.schema` (role ``control``) name them.
CONTROL_FIELDS = tuple(names(roles=("control",)))
#: those of the softmax control at the trained maps' mean entropy (:mod:`.controls`): ctrl_att, ctrl_att_jsd,
#: ctrl_att_own_object, ctrl_temperature; the rest (``ctrl_form*``) are the control in the maps' own form.
CONTROLS = tuple(name for name in CONTROL_FIELDS if not name.startswith("ctrl_form"))


def nans(*shape: int) -> Tensor:
    """float64 NaN of ``shape`` (``[B]`` or ``[B, M]``): a statistic not defined for a site's maps."""
    return torch.full(shape, math.nan, dtype=torch.float64)


def cosine_distance(v: Tensor, mask: Tensor | None = None, *, convention: str = "1-cos", zero: str = "exclude",
                    kernels: str = "auto") -> Tensor:  # fmt: skip
    """:func:`nlanalysis.metrics.mean_pairwise_cosine_distance` of ``v`` ``[B, n, D]`` (rows ``mask`` ``[B, n]``)
    -> ``[B]`` float64, in one native pass over float32 CPU features (:func:`nlanalysis.kernels.unit_sum`:
    rows or columns read in place, so ``x.flatten(2).transpose(1, 2)`` of a feature map costs no copy)
    where the kernels build and ``kernels`` allows; eager PyTorch otherwise (a GPU's features stay there).
    The same numbers to float64 rounding, the same errors (NaN/inf in a used vector)."""
    if v.dim() != 3 or v.dtype != torch.float32 or v.device.type != "cpu" or kernels == "eager":
        return mean_pairwise_cosine_distance(v, mask=mask, convention=convention, zero=zero)
    from .. import kernels as _native  # loaded on first use: a plain `import nlanalysis` stays light

    if not _native.uses_native(kernels, v.device):
        return mean_pairwise_cosine_distance(v, mask=mask, convention=convention, zero=zero)
    s, n_zero, bad = _native.unit_sum(v, mask.to(torch.bool) if mask is not None else None)
    if bool(bad.any()):
        raise ValueError("features contain NaN/inf; check the model's inputs and dtype (fp16 overflow?)")
    n_total = mask.sum(-1).long() if mask is not None else torch.full((v.shape[0],), v.shape[1], dtype=torch.int64)
    return distance_from_sum(s.square().sum(-1), n_total, n_zero, convention=convention, zero=zero)


def row_results(sums: Tensor, n_query: Tensor, log_k: Tensor, objects: bool) -> dict[str, Tensor]:
    """``att_entropy``, ``att_max``, ``att_zero_rows``, ``att_own_object`` and ``own_object_share``
    ``[B, M]`` from the sums ``[8, B, M]`` of a pass over every row (:mod:`.head_rows`: entropy, max
    weight, non-zero rows, zero rows, prefix mass, own-object mass, share and count), the valid queries
    ``n_query`` and ``log_k = log max(n_key, 2)`` (``[B, 1]`` float64); own-object NaN without ``objects``."""
    nz, nan = sums[2], torch.full_like(sums[5], math.nan)
    own = [torch.where(sums[7] > 0, sums[i] / sums[7], nan) if objects else nan for i in (5, 6)]
    return dict(att_entropy=sums[0] / log_k / nz, att_max=sums[1] / nz, att_zero_rows=1.0 - nz / n_query,
                att_own_object=own[0], own_object_share=own[1])  # fmt: skip


@dataclass
class SiteStats:
    """Per-image statistics of one attention site; per-map tensor fields are ``[B, M]``.

    Attributes:
        input, output, att: mean pairwise cosine distances of the input features, of what the
            site adds before fusion (a ViT head: its share of the branch) and of the query maps.
        att_jsd, att_jsd_stderr: mean pairwise Jensen-Shannon divergence of query maps (bits) and
            the standard error of its pair-sampled estimate (0 when exact).
        att_entropy: mean normalised entropy of the query maps (1 = uniform, 0 = one-hot).
        att_max: mean of each map's largest weight; att_zero_rows: fraction of all-zero rows.
        input_zero, output_zero: number of all-zero feature vectors (int64).
        att_own_object, own_object_share: mean attention mass a query on an object puts on that
            object, and the share of valid keys the object covers (uniform baseline); NaN without labels.
        n_query, n_key: ``[B]`` valid query and key positions.
        convention, zero_rule: the cosine-distance convention and zero-vector rule used.
        att_prefix_mass: mean weight patch queries put on class/register tokens (ViT only).
        ctrl_att, ctrl_att_jsd, ctrl_att_own_object, ctrl_temperature: the random-projection
            control at matched sharpness (:mod:`nlanalysis.measure.controls`), or ``None``.
        ctrl_form, ctrl_form_att, ...: the control in the maps' own form (:mod:`nlanalysis.measure.control_forms`;
            ``ctrl_form`` a string per site), or ``None``.
        query_independent: one map serves every query by construction (NL/GC only).
        keys: ``"patch"`` or ``"all"`` (ViT only).
        logit_rank1 ... att_local_uniform: the query-dependence suite (:mod:`.query_dep`, ``[B, M]``
            float64), ``None`` unless asked for (``query_dependence="cheap"`` / ``"all"``).
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
    att_own_object: Tensor
    own_object_share: Tensor
    n_query: Tensor
    n_key: Tensor
    convention: str
    zero_rule: str
    att_prefix_mass: Tensor | None = None
    ctrl_att: Tensor | None = None
    ctrl_att_jsd: Tensor | None = None
    ctrl_att_own_object: Tensor | None = None
    ctrl_temperature: Tensor | None = None
    ctrl_form: str | None = None
    ctrl_form_att: Tensor | None = None
    ctrl_form_att_jsd: Tensor | None = None
    ctrl_form_att_own_object: Tensor | None = None
    ctrl_form_gap: Tensor | None = None
    query_independent: bool | None = None
    keys: str | None = None
    logit_rank1: Tensor | None = None
    att_gain_only: Tensor | None = None
    gain_only_tv: Tensor | None = None
    unary_var_share: Tensor | None = None
    att_pairwise_only: Tensor | None = None
    att_abs: Tensor | None = None
    att_norm_weighted: Tensor | None = None
    qk_nmi: Tensor | None = None
    att_distance_px: Tensor | None = None
    att_local: Tensor | None = None
    att_local_uniform: Tensor | None = None

    @property
    def num_maps(self) -> int:
        return self.att.shape[1]

    @property
    def num_heads(self) -> int:
        """Heads of a ViT layer (its maps less the head mean); 0 for an NL/GC block."""
        return self.num_maps - 1

    @property
    def controls(self) -> dict[str, Tensor] | None:
        """The ``ctrl_*`` fields as ``{column: [B, M]}``, or ``None`` when none was measured."""
        found = {name: getattr(self, name) for name in CONTROL_FIELDS if getattr(self, name) is not None}
        return found or None

    @controls.setter
    def controls(self, value: dict[str, Tensor] | None) -> None:
        for name in CONTROL_FIELDS:
            setattr(self, name, None if value is None else value.get(name))

    def per_image_map(self) -> list[list[dict[str, float | int | bool | str]]]:
        """``rows[b]``: one plain dict per map of image ``b`` (ViT: every head, then the head mean);
        its ``head`` is the map's index, :data:`~nlanalysis.schema.HEAD_MEAN` for the last (or only) map."""
        m = self.num_maps
        present = [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]
        out = []
        for b in range(self.att.shape[0]):
            per_map = []
            for h in range(m):
                row: dict[str, float | int | bool | str] = {"head": HEAD_MEAN if h == m - 1 else h}
                for name, value in present:
                    if isinstance(value, Tensor):
                        value = (value[b, h] if value.dim() == 2 else value[b]).item()
                    row[name] = value
                per_map.append(row)
            out.append(per_map)
        return out

    def per_image(self) -> list[dict[str, float | int | bool | str]]:
        """One plain dict per image, ready for a table row: the last map's (an NL/GC block's only map,
        a ViT layer's head mean), as :meth:`per_image_map` gives it, without ``head``."""
        return [{k: v for k, v in maps[-1].items() if k != "head"} for maps in self.per_image_map()]
