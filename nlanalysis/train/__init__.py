"""Training the reference NL/GC scene-segmentation models (``nlanalysis train``)."""
from .data import SceneSet, load_scene_set, normalize, scene_preprocess
from .loop import TrainConfig, TrainResult, evaluate, train_variant
from .variants import ALL_VARIANTS, CONTROL_VARIANTS, VARIANTS, variant_arch

__all__ = [
    "ALL_VARIANTS", "CONTROL_VARIANTS", "VARIANTS", "SceneSet", "TrainConfig", "TrainResult", "evaluate", "load_scene_set",
    "normalize", "scene_preprocess", "train_variant", "variant_arch",
]  # fmt: skip
