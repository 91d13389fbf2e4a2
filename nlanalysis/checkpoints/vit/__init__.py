"""Vision Transformer checkpoints: the named offline models (:mod:`.models`), ONNX / Hugging Face /
timm layouts converted to timm (:mod:`.convert`), and their preprocessing (:mod:`.preprocess`).
Needs the ``vit`` extra (timm, onnx) only when a model is built: importing this package does not
import them."""
