"""Figures of the GCNet analysis (matplotlib; PNG and PDF, deterministic).

One module per figure, each a function that returns a :class:`matplotlib.figure.Figure`;
:func:`save_figure` writes it. All take what ``nlanalysis extract`` wrote (``load_run``):

* :func:`plot_query_maps` (``query_maps``): GCNet's Figure 2, each query's map over the image;
* :func:`plot_query_distances` (``query_distances``): pairwise cosine distances between the
  query maps of one image, as a heat map;
* :func:`plot_distributions` (``distributions``): ``input``/``output``/``att`` across images,
  per block, runs side by side;
* :func:`plot_over_training` (``training``): each statistic against the training step, per variant;
* :func:`plot_layer_heads`, :func:`plot_head_maps` (``vit_heads``): a ViT's layers x heads map of
  a statistic, and Figure 2 grids of chosen heads side by side (rows drawn by ``map_grid``).
"""
from .distributions import plot_distributions
from .query_distances import plot_query_distances, query_distance_matrix
from .query_maps import plot_query_maps
from .style import STYLE, save_figure
from .training import plot_over_training
from .vit_heads import plot_head_maps, plot_layer_heads

__all__ = [
    "STYLE",
    "plot_distributions",
    "plot_head_maps",
    "plot_layer_heads",
    "plot_over_training",
    "plot_query_distances",
    "plot_query_maps",
    "query_distance_matrix",
    "save_figure",
]
