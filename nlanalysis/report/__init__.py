"""Reports over result sets: Figure 2 maps, distributions, Table 1 and pages (:mod:`.runs`), and the
layer x head report of a ViT (:mod:`.vit`).

Modules: :mod:`.pages` (:class:`Report`, the one writer of both reports' tables, figures and
``index.md``/``index.html``), :mod:`.staging` (a report folder written whole or not at all),
:mod:`.meta` (result sets and their checkpoints' facts), :mod:`.images` (the image files behind
saved maps); the NL report :mod:`.runs` with :mod:`.summary` (its numbers in words) and
:mod:`.nl_figures` (its per-image figures); the ViT report :mod:`.vit` with :mod:`.vit_tables`,
:mod:`.vit_text`, :mod:`.vit_figures` and :mod:`.vit_compare` (beside an NL Table 1)."""
from .runs import Report, RunMeta, Runs, describe_run, find_image, find_images, load_runs, summary_text, write_pages, write_report

__all__ = ["Report", "RunMeta", "Runs", "describe_run", "find_image", "find_images", "load_runs", "summary_text", "write_pages", "write_report"]
