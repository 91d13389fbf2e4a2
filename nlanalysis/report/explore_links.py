"""The report's links to the explore page (``nlanalysis explore``) of each of its runs.

The explore package sits above the report in the layers (it finds image files as the report
does), so the report never imports it: whoever may import both (``nlanalysis report``, the
command) hands the report a :data:`PageWriter`. The report then writes the page of every run
saved with ``--save-maps all`` into its own folder, ``OUT/explore/LABEL.html``, inside the same
staged folder as its figures: the page is replaced together with the report, and the relative
link in ``index.md``/``index.html`` keeps working when the folder is moved or copied. Without a
writer (the Python API), or for runs that saved only their chosen queries, the report says which
command makes the page.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from ..extract.results import ResultSet
from .nl_figures import slug

__all__ = ["EXPLORE_DIR", "PageWriter", "explore_lines"]

#: the report's sub-folder of explore pages (one self-contained HTML file per run)
EXPLORE_DIR = "explore"
#: writes the explore page of a run to a path and returns it (``nlanalysis report`` passes one)
PageWriter = Callable[[ResultSet, Path], Path]
#: images in a report's explore page of a run (its first, in run order): a page holds every query's map of each image
#: (~2 MB an image and block at COCO scale), so a page of a 5,000-image run would not fit in memory
PAGE_IMAGES = 20


def _saved(run: ResultSet) -> str:
    """``"all"`` (every query), ``"chosen"`` (``--save-maps``: the chosen queries), ``"empty"`` (``--save-maps all``, but
    no image with maps: every image failed) or ``"none"``."""
    mode = run.info.get("settings", {}).get("save_maps")
    if mode == "all":
        return "all" if len(run.maps) else "empty"
    return "chosen" if len(run.maps) else "none"


def explore_lines(
    runs: Sequence[tuple[str, ResultSet]], work: Path, out: Path, writer: PageWriter | None
) -> tuple[list[str], list[Path]]:
    """The report's "Explore" list, and the pages written (in ``work``, the staged report folder).

    Args:
        runs: ``(label, result set)`` of each run.
        work: where the report is being written (``work / explore / LABEL.html``).
        out: the report folder it becomes (for the commands the text gives).
        writer: writes a page (:data:`PageWriter`); ``None``: no page is written, the text gives the command.
    """
    lines, pages, used = [], [], set()
    chosen = [label for label, run in runs if _saved(run) == "chosen"]
    missing = [label for label, run in runs if _saved(run) == "none"]
    empty = [label for label, run in runs if _saved(run) == "empty"]
    for label, run in runs:
        if _saved(run) != "all":
            continue
        rel = f"{EXPLORE_DIR}/{slug(label)}.html"
        rel = rel if rel not in used else f"{EXPLORE_DIR}/{slug(label)}_{len(used)}.html"
        used.add(rel)
        if writer is None:
            lines.append(f"`{label}` saved every query's map: `nlanalysis explore {run.path} --out {out / rel}` writes its "
                         "page (`nlanalysis report` writes it beside the report)")  # fmt: skip
            continue
        shown = run if len(run.maps) <= PAGE_IMAGES else replace(run, maps=run.maps.first(PAGE_IMAGES))
        page = writer(shown, work / rel)
        pages.append(page)
        more = (f" (the first {PAGE_IMAGES} of its {len(run.maps)}; `nlanalysis explore {run.path} --image-ids ...` pages "
                "others)" if shown is not run else "")  # fmt: skip
        lines.append(f"[{label}: hover every query's attention map]({rel}): {len(shown.maps)} images{more}, "
                     f"{page.stat().st_size / 1e6:.1f} MB, one self-contained HTML file (opens from disk, no network)")  # fmt: skip
    if chosen:
        lines.append(f"{_names(chosen)} saved the maps of {'its' if len(chosen) == 1 else 'their'} chosen queries only (`extract --save-maps`): "
                     "`nlanalysis explore RUN_DIR` shows those; to hover every query, extract with `--save-maps all` and report again")  # fmt: skip
    if missing:
        lines.append(f"{_names(missing)} saved no maps: extract with `--save-maps all`, then `nlanalysis explore RUN_DIR` "
                     "(or report again) to hover every query's map")  # fmt: skip
    if empty:
        lines.append(f"{_names(empty)} saved every query's map but {'holds' if len(empty) == 1 else 'hold'} no image with maps "
                     "(its images failed, see failures.csv, or their maps files are gone): no page to explore")  # fmt: skip
    return lines, pages


def _names(labels: Sequence[str]) -> str:
    shown = ", ".join(f"`{label}`" for label in labels[:8])
    return shown + (f" and {len(labels) - 8} more" if len(labels) > 8 else "")
