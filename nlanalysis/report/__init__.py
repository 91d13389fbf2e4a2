"""Reports over result sets: Figure 2 maps, distributions, Table 1 and pages (:mod:`.runs`), and the
layer x head report of a ViT (:mod:`.vit`).

Modules: :mod:`.meta` (result sets and their checkpoints' facts), :mod:`.images` (the image files
behind saved maps), :mod:`.summary` (the NL numbers in words), :mod:`.nl_figures` (the NL
per-image figures), :mod:`.pages` (``index.md``/``index.html``, shared by both reports),
:mod:`.staging` (a report folder written whole or not at all), :mod:`.runs` (the NL report);
:mod:`.vit_tables`, :mod:`.vit_text`, :mod:`.vit_compare` (beside an NL Table 1) and
:mod:`.vit` (the ViT report)."""
from .runs import Report, RunMeta, Runs, describe_run, find_image, find_images, load_runs, summary_text, write_pages, write_report

__all__ = ["Report", "RunMeta", "Runs", "describe_run", "find_image", "find_images", "load_runs", "summary_text", "write_pages", "write_report"]
