"""The unified diff of an edit against the original response text."""

from __future__ import annotations

import difflib


def unified(original: str, edited: str) -> str:
    """``diff -u`` style, line based; texts without a final newline still diff cleanly."""
    lines = difflib.unified_diff(
        _lines(original), _lines(edited), fromfile="original", tofile="edited", lineterm=""
    )
    return "\n".join(lines)


def _lines(text: str) -> list[str]:
    return text.splitlines()
