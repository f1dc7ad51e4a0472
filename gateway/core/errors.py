"""The one error hierarchy.  Each error knows its HTTP status and OpenAI error ``type``.

    FlywheelError
     +-- InvalidRequest (400 invalid_request_error)
     |    +-- AdapterInvalid           an adapter directory that does not fit the base
     +-- AuthenticationError (401)
     +-- PermissionDenied (403)
     +-- NotFound (404)                unknown model / completion; another tenant's looks the same
     +-- Conflict (409)
     +-- PayloadTooLarge (413)
     +-- RateLimited (429, carries retry_after)
     +-- EngineError (500 server_error)
     |    +-- AdapterLoadRefused       unverified or unloadable adapter; the old route keeps serving
     +-- ServiceUnavailable (503, carries retry_after)
          +-- EngineUnavailable        every engine replica is down
          +-- DatabaseUnavailable      no database and nothing cached to answer from

The API renders every one of them once, in gateway/api/errors.py, as
``{"error": {"message", "type", "param", "code"}}``.  The CLI prints ``message``.
"""

from __future__ import annotations


class FlywheelError(Exception):
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


class InvalidRequest(FlywheelError):
    status_code = 400
    error_type = "invalid_request_error"


class AdapterInvalid(InvalidRequest):
    code = "adapter_invalid"


class AuthenticationError(FlywheelError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(FlywheelError):
    status_code = 403
    error_type = "permission_error"


class NotFound(FlywheelError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class Conflict(FlywheelError):
    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(FlywheelError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"


class RateLimited(FlywheelError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineError(FlywheelError):
    status_code = 500
    error_type = "server_error"
    code = "engine_error"


class AdapterLoadRefused(EngineError):
    code = "adapter_load_refused"


class ServiceUnavailable(FlywheelError):
    status_code = 503
    error_type = "server_error"
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineUnavailable(ServiceUnavailable):
    code = "engine_unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"
