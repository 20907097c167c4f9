"""One error hierarchy for the service, rendered in the OpenAI error shape.

`{"error": {"message": str, "type": str, "param": str | None, "code": str | None}}`
"""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class AppError(Exception):
    status_code = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = headers


class BadRequestError(AppError):
    status_code = 400
    error_type = "invalid_request_error"


class InvalidAudioError(BadRequestError):
    default_code = "invalid_audio"


class UnauthorizedError(AppError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class ForbiddenError(AppError):
    status_code = 403
    error_type = "permission_error"
    default_code = "insufficient_permissions"


class QuotaExceededError(ForbiddenError):
    """A per-user quota (recordings kept, their seconds) would be passed."""

    error_type = "insufficient_quota"
    default_code = "quota_exceeded"


class NotFoundError(AppError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"


class ConflictError(AppError):
    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class PayloadTooLargeError(AppError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "file_too_large"


class UnprocessableError(AppError):
    status_code = 422
    error_type = "invalid_request_error"
    default_code = "invalid_value"


class DataIntegrityError(AppError):
    """Stored data is missing or fails its checksum: it is reported, never served as intact."""

    status_code = 500
    error_type = "server_error"
    default_code = "data_integrity_error"


class ServiceUnavailableError(AppError):
    status_code = 503
    error_type = "server_error"
    default_code = "overloaded"


class DatabaseUnavailableError(ServiceUnavailableError):
    """The database cannot be reached (stopped, restarting, unreachable): it passes."""

    default_code = "database_unavailable"


class ClientDisconnectedError(AppError):
    """The client went away before its result was computed; nothing is sent back."""

    status_code = 499
    error_type = "invalid_request_error"
    default_code = "client_disconnected"


class UploadTooLarge(StarletteHTTPException):
    """Raised from inside the body stream, where FastAPI only lets HTTP exceptions through."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"Request body exceeds the {limit} byte limit.")


def error_body(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
}
_CODE_BY_STATUS = {404: "not_found", 405: "method_not_allowed", 413: "file_too_large"}


def app_error_body(exc: AppError) -> dict[str, Any]:
    return error_body(exc.message, exc.error_type, param=exc.param, code=exc.code)


def server_error_body(request_id: str) -> dict[str, Any]:
    """What an unexpected failure answers: no detail, only the id to find it in the logs."""
    return error_body(f"Internal server error (request id {request_id}).", "server_error")


async def _app_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return JSONResponse(app_error_body(exc), status_code=exc.status_code, headers=exc.headers)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error_type = _TYPE_BY_STATUS.get(exc.status_code, "server_error")
    body = error_body(str(exc.detail), error_type, code=_CODE_BY_STATUS.get(exc.status_code))
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "Invalid request."}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(loc) or None
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    body = error_body(message, "invalid_request_error", param=param, code="invalid_value")
    return JSONResponse(body, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    # Any other exception is answered by the outermost middleware (AccessLogMiddleware): the
    # handler Starlette offers for it re-raises, and the server then drops the connection.
