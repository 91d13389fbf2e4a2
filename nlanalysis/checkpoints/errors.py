"""The one error type of checkpoint loading: a one-line message that names the file."""
from __future__ import annotations

__all__ = ["CheckpointError", "ConfigLimitError"]


class CheckpointError(ValueError):
    """A checkpoint that can't be read, recognised or rebuilt; ``str()`` names the file."""

    def __init__(self, path: object, message: str) -> None:
        self.path = str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")


class ConfigLimitError(CheckpointError):
    """A config refused because reading it would take too much memory or work (a size, nesting,
    ``_base_`` or work limit of :class:`nlanalysis.checkpoints.config.ConfigLimits`)."""
