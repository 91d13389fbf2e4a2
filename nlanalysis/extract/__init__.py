"""``nlanalysis extract``: the GCNet analysis over a data set, streamed into a result set.

One call (:func:`run_extract`, or the ``nlanalysis extract`` command) runs a checkpoint over COCO
or image files and writes ``RUN_DIR`` (layout in :mod:`nlanalysis.extract.store`): one row per
(image, block) in ``metrics.csv`` with the paper's statistics, optional query maps per image,
``run.json`` and ``failures.csv``. Writes are atomic, so a killed run resumes to exactly the rows
of an uninterrupted one; shards (``--shard I/N`` or torchrun ranks) split the images and
:func:`merge_runs` combines shards written to different folders. :func:`load_run` reads it back.

Modules: ``sources`` (which images), ``objects`` (annotations as a label map), ``queries``
(query points), ``runner`` (the loop), ``store`` (files on disk), ``maps`` (saved maps),
``results`` (``load_run``).
"""
from .maps import ImageMaps
from .queries import QuerySpec, parse_queries, select_queries
from .results import ResultSet, load_run
from .runner import COLUMNS, ExtractReport, run_extract
from .sources import ImageItem, coco_images, file_images
from .store import merge_runs

__all__ = [
    "COLUMNS",
    "ExtractReport",
    "ImageItem",
    "ImageMaps",
    "QuerySpec",
    "ResultSet",
    "coco_images",
    "file_images",
    "load_run",
    "merge_runs",
    "parse_queries",
    "run_extract",
    "select_queries",
]
