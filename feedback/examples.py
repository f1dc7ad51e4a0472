"""One feedback example, the same shape from the export to the gate: TRL's dataset rows.

* :class:`KTORow` (unpaired): ``prompt``, ``completion``, ``label`` (True = desirable).
* :class:`DPORow` (paired): ``prompt``, ``chosen``, ``rejected`` (an edit: the user's text is
  chosen, the model's original answer rejected).

Either all plain text or all conversational: a conversational prompt is a list of ``{"role",
"content"}`` messages and each completion a list holding one assistant message; TRL then renders
them with the tokenizer's chat template.  ``meta`` carries provenance (feedback and completion
ids, adapter version, signal); it is written to JSON (exports, a round's held-out rows) and left
out of what the trainers see.

``feedback/export.py`` makes them, ``retrain/`` trains and gates on them, and a round stores its
held-out rows with :meth:`to_json` and reads them back with :func:`example_from_json`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from gateway.core.errors import InvalidRequest

Message: TypeAlias = dict[str, str]
# A plain string, or TRL's conversational format: a list of {"role", "content"} messages.
Text: TypeAlias = str | list[Message]


def _check_text(value: Text, what: str, *, completion: bool) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"{what} must be a string or a non-empty list of chat messages")
    for message in value:
        if not isinstance(message, dict) or not {"role", "content"} <= message.keys():
            raise InvalidRequest(f"{what}: every chat message needs 'role' and 'content'")
    if completion and (len(value) != 1 or value[0]["role"] != "assistant"):
        raise InvalidRequest(f"{what} must be a list holding exactly one assistant message")


def _check_same_format(prompt: Text, answers: Sequence[Text]) -> None:
    conversational = isinstance(prompt, list)
    if any(isinstance(answer, list) != conversational for answer in answers):
        raise InvalidRequest("prompt and completions must be all plain text or all chat messages")


@dataclass(frozen=True)
class KTORow:
    """One unpaired example: a completion labelled desirable (True) or undesirable (False)."""

    prompt: Text
    completion: Text
    label: bool
    meta: dict[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_text(self.prompt, "prompt", completion=False)
        _check_text(self.completion, "completion", completion=True)
        _check_same_format(self.prompt, [self.completion])

    def to_trl(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "completion": self.completion, "label": self.label}

    def to_json(self) -> dict[str, Any]:
        """TRL's columns and, when known, the provenance (``meta``)."""
        return self.to_trl() | ({"meta": self.meta} if self.meta is not None else {})


@dataclass(frozen=True)
class DPORow:
    """One preference pair: ``chosen`` is preferred over ``rejected`` for ``prompt``."""

    prompt: Text
    chosen: Text
    rejected: Text
    meta: dict[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_text(self.prompt, "prompt", completion=False)
        _check_text(self.chosen, "chosen", completion=True)
        _check_text(self.rejected, "rejected", completion=True)
        _check_same_format(self.prompt, [self.chosen, self.rejected])

    def to_trl(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}

    def to_json(self) -> dict[str, Any]:
        """TRL's columns and, when known, the provenance (``meta``)."""
        return self.to_trl() | ({"meta": self.meta} if self.meta is not None else {})

    def to_kto(self) -> list[KTORow]:
        """An edit as KTO rows: the edit is desirable, the original answer undesirable."""
        return [
            KTORow(self.prompt, self.chosen, True, self.meta),
            KTORow(self.prompt, self.rejected, False, self.meta),
        ]


def example_from_json(row: dict[str, Any]) -> KTORow | DPORow:
    """A row written by ``to_json`` (an export line, a round's held-out row), checked."""
    meta = row.get("meta")
    if "chosen" in row:
        return DPORow(row["prompt"], row["chosen"], row["rejected"], meta)
    return KTORow(row["prompt"], row["completion"], bool(row["label"]), meta)
