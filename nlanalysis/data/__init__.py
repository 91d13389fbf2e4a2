"""Data in: image files, real sample photos, preprocessing the checkpoints expect."""
from .images import ImageReadError, image_size, load_image, sample_photos
from .transforms import Prepared, collate, prepare_image

__all__ = ["ImageReadError", "Prepared", "collate", "image_size", "load_image", "prepare_image", "sample_photos"]
