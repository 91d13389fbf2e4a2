"""Checkpoints of NL/GC models: safe reading, layout detection, rebuilding, this project's format."""
from .config import parse_config_file, parse_config_text
from .errors import CheckpointError
from .layouts import LAYOUTS, find_blocks
from .loader import KNOWN_FORMATS, LoadedCheckpoint, load_checkpoint, save_checkpoint
from .preprocess import Preprocess
from .reading import Placeholder, check_checkpoint_file, read_checkpoint_file

__all__ = [
    "KNOWN_FORMATS", "LAYOUTS", "CheckpointError", "LoadedCheckpoint", "Placeholder", "Preprocess", "check_checkpoint_file", "find_blocks",
    "load_checkpoint",
    "parse_config_file", "parse_config_text", "read_checkpoint_file", "save_checkpoint",
]  # fmt: skip
