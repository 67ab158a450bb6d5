"""The one error model: domain code raises AppError subclasses; api/ turns them into JSON.

AppError(code, http_status, message)
 ├── BadRequest        400  invalid input (bad_request, invalid_json, ...)
 ├── Unauthorized      401  missing or unknown key
 ├── Forbidden         403
 ├── NotFound          404
 ├── Conflict          409
 ├── PayloadTooLarge   400  Segment clients expect 400 for oversize bodies
 └── NotMigrated       the database schema is behind the code (CLI message, not HTTP)
"""

from __future__ import annotations


class AppError(Exception):
    """An error with a stable machine code, an HTTP status and a message safe to show."""

    code = "error"
    http_status = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class BadRequest(AppError):
    code = "bad_request"
    http_status = 400


class PayloadTooLarge(BadRequest):
    code = "payload_too_large"


class Unauthorized(AppError):
    code = "unauthorized"
    http_status = 401


class Forbidden(AppError):
    code = "forbidden"
    http_status = 403


class NotFound(AppError):
    code = "not_found"
    http_status = 404


class Conflict(AppError):
    code = "conflict"
    http_status = 409


class NotMigrated(AppError):
    code = "not_migrated"
    http_status = 503
