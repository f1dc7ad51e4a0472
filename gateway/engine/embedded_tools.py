"""A constrained row's text as OpenAI tool-call pieces (the internal chunk fields the vLLM relay
fills too, so responses.Shape writes both engines' calls the same way).

The grammar (embedded_grammar) guarantees the shape of what is read here: a named tool's text
is its arguments, streamed as they come; Hermes blocks (``<tool_call>\\n{"name": ...,
"arguments": ...}\\n</tool_call>``) become one call each when the block closes, and the text
around them (``"auto"``) stays content.  A block cut off by ``max_tokens`` is dropped: the
finish says ``"length"``.
"""

from __future__ import annotations

import json
import uuid

from gateway.engine.base import ToolCallDelta
from gateway.engine.embedded_grammar import TOOL_CLOSE, TOOL_OPEN, Constraint


def call_id() -> str:
    """OpenAI's tool-call id shape (``call_`` and 24 characters)."""
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallReader:
    """Splits one row's text deltas into content and tool-call pieces."""

    def __init__(self, constraint: Constraint) -> None:
        self._named = constraint.tool_name if constraint.tools == "named" else None
        self._keep_text = constraint.text
        self._pending = ""  # tagged: text not yet known to be content or a call
        self._in_call = False
        self.calls = 0

    def feed(self, delta: str, *, final: bool) -> tuple[str, list[ToolCallDelta]]:
        """The content and the tool-call pieces ``delta`` completes; ``final`` flushes."""
        if self._named is not None:
            return "", self._named_pieces(delta)
        self._pending += delta
        content: list[str] = []
        pieces: list[ToolCallDelta] = []
        while True:
            if self._in_call:
                end = self._pending.find(TOOL_CLOSE)
                if end < 0:
                    break
                pieces.append(self._block(self._pending[:end]))
                self._pending = self._pending[end + len(TOOL_CLOSE) :]
                self._in_call = False
                continue
            start = self._pending.find(TOOL_OPEN)
            if start < 0:
                break
            content.append(self._pending[:start])
            self._pending = self._pending[start + len(TOOL_OPEN) :]
            self._in_call = True
        if not self._in_call:
            keep = 0 if final else _partial_opener(self._pending)
            content.append(self._pending[: len(self._pending) - keep])
            self._pending = self._pending[len(self._pending) - keep :]
        text = "".join(content) if self._keep_text else ""
        if self.calls and not text.strip():
            text = ""  # the newlines between and after blocks are not an answer
        return text, pieces

    @property
    def tagged_calls(self) -> bool:
        """Hermes blocks became calls: the choice finishes with ``"tool_calls"``."""
        return self._named is None and self.calls > 0

    def _named_pieces(self, delta: str) -> list[ToolCallDelta]:
        if not delta:
            return []
        if self.calls == 0:
            self.calls = 1
            return [ToolCallDelta(0, id=call_id(), name=self._named, arguments=delta)]
        return [ToolCallDelta(0, arguments=delta)]

    def _block(self, block: str) -> ToolCallDelta:
        call = json.loads(block)  # the grammar made it {"name": ..., "arguments": {...}}
        piece = ToolCallDelta(
            self.calls,
            id=call_id(),
            name=call["name"],
            arguments=json.dumps(call["arguments"], ensure_ascii=False),
        )
        self.calls += 1
        return piece


def _partial_opener(text: str) -> int:
    """Length of the longest end of ``text`` that could grow into ``<tool_call>``."""
    for size in range(min(len(TOOL_OPEN) - 1, len(text)), 0, -1):
        if TOOL_OPEN.startswith(text[-size:]):
            return size
    return 0
