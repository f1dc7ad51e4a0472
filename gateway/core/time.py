"""Time, one way: aware datetimes in UTC everywhere."""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(value: datetime) -> datetime:
    """Aware datetimes in UTC; naive ones (SQLite reads them back naive) are taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
