"""Request and response models of /v1/feedback.

Body: one item, or a batch ``{"feedback": [item, ...]}`` (1 to 100 items, stored all or
nothing).  An item::

    {"completion_id": "chatcmpl-...",          required
     "rating": "up" | "down",                  optional when edited_output or comment is given
     "edited_output": "the answer as it should have been",
     "comment": "free text", "end_user": "your user id", "metadata": {...},
     "id": "client-chosen id"}                 retries with the same id update, never duplicate

A single item may carry its id in the ``Idempotency-Key`` header instead.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from feedback.service import MAX_BATCH, FeedbackInput, StoredFeedback


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    completion_id: str = Field(min_length=1, max_length=64)
    rating: Literal["up", "down"] | None = None
    edited_output: str | None = Field(default=None, max_length=200_000)
    comment: str | None = Field(default=None, max_length=20_000)
    end_user: str | None = Field(default=None, max_length=256)
    metadata: dict[str, Any] | None = None
    id: str | None = Field(default=None, min_length=1, max_length=128)

    def to_input(self) -> FeedbackInput:
        return FeedbackInput(
            completion_id=self.completion_id,
            rating=self.rating,
            edited_output=self.edited_output,
            comment=self.comment,
            end_user=self.end_user,
            metadata=self.metadata or {},
            id=self.id,
        )


class FeedbackBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feedback: list[FeedbackItem] = Field(min_length=1, max_length=MAX_BATCH)


class FeedbackObject(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    completion_id: str
    rating: str | None
    edited_output: str | None
    diff: str | None
    comment: str | None
    end_user: str | None
    metadata: dict[str, Any]
    source: str
    created_at: int
    updated_at: int
    status: Literal["stored", "queued"]  # queued: accepted while the database was down

    @classmethod
    def from_stored(cls, fb: StoredFeedback) -> FeedbackObject:
        return cls(
            id=fb.id,
            completion_id=fb.completion_id,
            rating=fb.rating,
            edited_output=fb.edited_output,
            diff=fb.diff,
            comment=fb.comment,
            end_user=fb.end_user,
            metadata=fb.metadata,
            source=fb.source,
            created_at=int(fb.created_at.timestamp()),
            updated_at=int(fb.updated_at.timestamp()),
            status=fb.status,
        )


class FeedbackList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FeedbackObject]
