"""Reports over result sets: Figure 2 maps, distributions, Table 1 and pages (:mod:`.runs`), and the
layer x head report of a ViT (:mod:`.vit`)."""
from .runs import Report, RunMeta, Runs, describe_run, find_image, find_images, load_runs, summary_text, write_pages, write_report

__all__ = ["Report", "RunMeta", "Runs", "describe_run", "find_image", "find_images", "load_runs", "summary_text", "write_pages", "write_report"]
