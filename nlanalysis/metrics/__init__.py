"""Statistics of the GCNet query-dependence analysis (arXiv 1904.11492, Sec. 3).

* :mod:`.cosine`: mean pairwise cosine distance, exact in O(N*D) and streamable.
* :mod:`.divergence`: Jensen-Shannon divergence (Lin 1991), entropy and peak
  weight of attention rows seen as distributions over keys.
* :mod:`.intervals`: t / bootstrap confidence intervals over images and seeds.
* :mod:`.grouped`: the table engine, those intervals per group of rows (imports pandas; not
  loaded by this package: ``from nlanalysis.metrics.grouped import grouped_intervals``).
"""

from .cosine import Convention, CosineAccumulator, ZeroRule, distance_from_sum, mean_pairwise_cosine_distance
from .divergence import (
    SampledMean,
    is_distribution_like,
    jensen_shannon,
    mean_pairwise_jsd_exact,
    mean_pairwise_jsd_sampled,
    row_entropy,
    row_max_weight,
    zero_rows,
)
from .intervals import Interval, hierarchical_mean_ci, mean_ci

__all__ = [
    "Convention",
    "CosineAccumulator",
    "Interval",
    "SampledMean",
    "ZeroRule",
    "hierarchical_mean_ci",
    "is_distribution_like",
    "jensen_shannon",
    "mean_ci",
    "mean_pairwise_cosine_distance",
    "mean_pairwise_jsd_exact",
    "mean_pairwise_jsd_sampled",
    "row_entropy",
    "row_max_weight",
    "zero_rows",
]
