"""The one error a model source raises when it cannot give a usable model directory."""

from __future__ import annotations

__all__ = ["ModelSourceError"]


class ModelSourceError(ValueError):
    """A source that does not point at a usable model: the message names the source and the fix."""
