"""Turn a growing list of generated token ids into streamed text deltas, honouring stop strings.

Only the engine thread touches a :class:`StreamText`; the tokenizer it decodes with belongs to
that thread too.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT_CHAR = "\ufffd"

# Decoding the generated ids together with a few prompt ids keeps tokenizers that merge a
# leading space into the first word (SentencePiece) from dropping it.
PROMPT_CONTEXT_TOKENS = 5


class StreamText:
    """Incremental detokenizer plus stop-string matcher for one generation."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int], stops: tuple[str, ...]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        # ids[prefix:read] is text already turned into deltas; ids[read:] is not yet.
        self._prefix = 0
        self._read = len(self._ids)
        self._stops = tuple(s for s in stops if s)
        self._longest_stop = max((len(s) for s in self._stops), default=0)
        self.text = ""
        self._emitted = 0
        self.stopped = False

    def push(self, token_id: int, *, match_stops: bool = True) -> None:
        """Add one generated token; sets ``stopped`` when a stop string completes.

        With ``match_stops`` False (before ``min_tokens`` are generated) the text grows without
        being searched; a stop string that completes later is still found.
        """
        self._ids.append(token_id)
        delta = self._decode_new()
        if delta:
            self._append(delta, match_stops=match_stops)

    def take(self, *, final: bool) -> str:
        """The text that may be sent now; ``final`` flushes everything still held back."""
        if final and not self.stopped:
            self._append(self._undecoded_tail())
        end = len(self.text) if final or self.stopped else len(self.text) - self._held_back()
        delta = self.text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        return delta

    def token_text(self, token_id: int, *, special: bool = False) -> str:
        """One token on its own, for logprobs: as in the text (a sampled token's strings join
        into the answer), or ``special`` tokens by name (an alternative that was not taken)."""
        text: str = self._tokenizer.decode(
            [token_id], skip_special_tokens=not special, clean_up_tokenization_spaces=False
        )
        return text

    def _decode(self, ids: list[int]) -> str:
        text: str = self._tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return text

    def _decode_new(self) -> str:
        # Byte-level BPE can split one character over several tokens; until the last one
        # arrives the decoded text ends in a replacement character, so wait for it.
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith(REPLACEMENT_CHAR):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]

    def _undecoded_tail(self) -> str:
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        return after[len(before) :]

    def _append(self, delta: str, *, match_stops: bool = True) -> None:
        search_from = max(0, len(self.text) - self._longest_stop + 1)
        self.text += delta
        if not match_stops:
            return
        hits = [i for i in (self.text.find(s, search_from) for s in self._stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def _held_back(self) -> int:
        """Length of the longest text suffix that could still grow into a stop string."""
        for size in range(min(self._longest_stop - 1, len(self.text)), 0, -1):
            tail = self.text[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0
