"""Browser feedback tokens: a signed, expiring grant to leave feedback on ONE completion.

The serving layer returns one per completion in ``x-flywheel-feedback-token``; a browser widget
sends it back as ``Authorization: Bearer fbt.<...>`` instead of the tenant key, which must never
reach a browser.  The token carries (completion id, tenant id, expiry) signed with
``FLYWHEEL_FEEDBACK_TOKEN_SECRET`` (itsdangerous, HMAC-SHA1 with a purpose-specific salt, so a
signature made for anything else with the same secret does not verify here).
"""

from __future__ import annotations

import time

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from gateway.errors import AuthenticationError

PREFIX = "fbt."
SALT = "flywheel.feedback-token.v1"


def _serializer(secret: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt=SALT)


def is_feedback_token(token: str) -> bool:
    return token.startswith(PREFIX)


def issue(completion_id: str, tenant_id: str, secret: str, ttl_s: int) -> str:
    # The expiry rides in the payload so a token keeps the lifetime it was issued with even
    # if the configured TTL changes later; verify also applies the current TTL as a cap.
    payload = {"c": completion_id, "t": tenant_id, "e": int(time.time()) + int(ttl_s)}
    return PREFIX + _serializer(secret).dumps(payload)


def verify(token: str, secret: str, ttl_s: int) -> tuple[str, str]:
    """Return (completion_id, tenant_id); 401 for an expired, forged or malformed token."""
    if not is_feedback_token(token):
        raise AuthenticationError("Not a feedback token.", code="invalid_feedback_token")
    try:
        payload = _serializer(secret).loads(token[len(PREFIX) :], max_age=ttl_s)
    except SignatureExpired:
        raise _expired() from None
    except BadSignature:
        raise AuthenticationError(
            "Invalid feedback token.", code="invalid_feedback_token"
        ) from None
    if not isinstance(payload, dict) or not {"c", "t", "e"} <= payload.keys():
        raise AuthenticationError("Invalid feedback token.", code="invalid_feedback_token")
    if time.time() > payload["e"]:
        raise _expired()
    return str(payload["c"]), str(payload["t"])


def _expired() -> AuthenticationError:
    return AuthenticationError(
        "This feedback token has expired; feedback for this completion now needs the API key.",
        code="expired_feedback_token",
    )
