"""The one error hierarchy, grouped by what a caller can do about an error.

    FlywheelError                  anything Flywheel raises on purpose
     +-- RequestError              the request is wrong: sending it again fails again
     |    +-- InvalidRequest (400 invalid_request_error; ``param`` names the field)
     |    |    +-- AdapterInvalid  an adapter directory that does not fit the base
     |    +-- NotFound (404)       unknown model / completion; another tenant's looks the same
     |    +-- Conflict (409)
     |    +-- PayloadTooLarge (413)
     +-- AccessError               who is asking, not what
     |    +-- AuthenticationError (401)
     |    +-- PermissionDenied (403)
     +-- RetryLater                try again after ``retry_after`` seconds (sent as Retry-After)
     |    +-- RateLimited (429)
     |    +-- ServiceUnavailable (503)
     |         +-- EngineUnavailable     every engine replica is down
     |         +-- DatabaseUnavailable   no database and nothing cached to answer from
     +-- EngineError (500 server_error)  the engine failed this request
          +-- AdapterLoadRefused   unverified or unloadable adapter; the old route keeps serving

Each class carries its HTTP status and OpenAI error ``type``; the API renders every one once,
in gateway/api/errors.py, as ``{"error": {"message", "type", "param", "code"}}``, and the CLI
prints ``message``.
"""

from __future__ import annotations


class FlywheelError(Exception):
    """Base of every error Flywheel raises on purpose (a bare one is a 500)."""

    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


# --- the request is wrong ----------------------------------------------------------------------


class RequestError(FlywheelError):
    """The request itself is wrong; the same request will fail the same way."""

    status_code = 400
    error_type = "invalid_request_error"


class InvalidRequest(RequestError):
    """A field is missing, malformed, out of range, or not something the engine can honour."""


class AdapterInvalid(InvalidRequest):
    """An adapter directory that does not fit the base model (rank, modules, shapes, DoRA)."""

    code = "adapter_invalid"


class NotFound(RequestError):
    """No such model, completion, tenant or version, as far as this caller may know."""

    status_code = 404
    code = "not_found"


class Conflict(RequestError):
    """The request contradicts the stored state (an id reused for another completion, ...)."""

    status_code = 409
    code = "conflict"


class PayloadTooLarge(RequestError):
    """The body is larger than ``FLYWHEEL_MAX_BODY_BYTES``."""

    status_code = 413
    code = "payload_too_large"


# --- who is asking -----------------------------------------------------------------------------


class AccessError(FlywheelError):
    """The caller's credentials, not the request, are the problem."""

    status_code = 401
    error_type = "authentication_error"


class AuthenticationError(AccessError):
    """No key, an unknown or revoked key, or a disabled tenant."""

    code = "invalid_api_key"


class PermissionDenied(AccessError):
    """A valid credential that may not do this (a browser token from a foreign origin, ...)."""

    status_code = 403
    error_type = "permission_error"


# --- try again later ---------------------------------------------------------------------------


class RetryLater(FlywheelError):
    """Nothing is wrong with the request; it can succeed after ``retry_after`` seconds."""

    status_code = 503
    error_type = "server_error"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(RetryLater):
    """The tenant's requests or tokens per minute are spent."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, retry_after=retry_after)


class ServiceUnavailable(RetryLater):
    """A dependency is away (an engine, the database)."""

    code = "service_unavailable"


class EngineUnavailable(ServiceUnavailable):
    """Every engine replica is down or starting."""

    code = "engine_unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """The database is unreachable and nothing cached can answer."""

    code = "database_unavailable"


# --- the engine failed ---------------------------------------------------------------------------


class EngineError(FlywheelError):
    """The engine failed this request (after it was accepted)."""

    status_code = 500
    error_type = "server_error"
    code = "engine_error"


class AdapterLoadRefused(EngineError):
    """An adapter was refused at load (signature, engine limits); the old route keeps serving."""

    code = "adapter_load_refused"
