"""Matrix-style JSON errors for every HTTP answer the container gives."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

_ERRCODES = {
    400: "M_BAD_JSON",
    401: "M_MISSING_TOKEN",
    403: "M_FORBIDDEN",
    404: "M_UNRECOGNIZED",
    405: "M_UNRECOGNIZED",
    413: "M_TOO_LARGE",
}


class MatrixError(Exception):
    """An error answered as ``{"errcode": ..., "error": ...}`` with an HTTP status."""

    def __init__(self, status: int, errcode: str, error: str, **extra: Any) -> None:
        super().__init__(f"{status} {errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error
        self.extra = extra

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"errcode": self.errcode, "error": self.error, **self.extra}, status_code=self.status
        )


async def matrix_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Answer a :class:`MatrixError`."""
    assert isinstance(exc, MatrixError)
    return exc.response()


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Answer Starlette's own 404/405 (and other HTTP errors) in the Matrix format."""
    assert isinstance(exc, HTTPException)
    errcode = _ERRCODES.get(exc.status_code, "M_UNKNOWN")
    message = {404: "Unrecognized request", 405: "Method not allowed"}.get(
        exc.status_code, exc.detail
    )
    return JSONResponse(
        {"errcode": errcode, "error": message}, status_code=exc.status_code, headers=exc.headers
    )


async def internal_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Never a stack trace to the peer: a 500 ``M_UNKNOWN`` (the traceback is logged)."""
    return JSONResponse({"errcode": "M_UNKNOWN", "error": "Internal server error"}, 500)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    MatrixError: matrix_error_handler,
    HTTPException: http_error_handler,
    Exception: internal_error_handler,
}
