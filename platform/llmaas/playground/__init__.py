"""The web playground: one self-contained HTML page (inline CSS and JS, no external assets).

The router serves it at ``GET /playground``; the page talks to the same OpenAI routes any
client uses (``/v1/models``, streaming ``/v1/chat/completions``), resolved relative to its own
URL so that it also works under a route prefix.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def playground_html() -> str:
    """The playground page, read once from the package data."""
    return resources.files("llmaas.playground").joinpath("index.html").read_text(encoding="utf-8")


__all__ = ["playground_html"]
