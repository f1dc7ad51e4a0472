"""Identifiers and secrets."""

from __future__ import annotations

import hashlib
import secrets
import uuid


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def completion_id(kind: str) -> str:
    """OpenAI-style ids, fixed before generation starts so feedback can be keyed by them."""
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def new_secret(prefix: str) -> str:
    return f"{prefix}{secrets.token_urlsafe(32)}"


def hash_secret(secret: str) -> str:
    """SHA-256 is enough for 256-bit random secrets (no dictionary to guess from)."""
    return hashlib.sha256(secret.encode()).hexdigest()
