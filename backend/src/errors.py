"""Domain errors that services raise and the API turns into JSON responses."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

from src import outages

RETRY_AFTER_SECONDS = 2


class HeraldError(Exception):
    status_code = 400
    headers: dict[str, str] | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(HeraldError):
    status_code = 404


class Forbidden(HeraldError):
    status_code = 403


class Conflict(HeraldError):
    status_code = 409


class Gone(HeraldError):
    status_code = 410


class Invalid(HeraldError):
    status_code = 422


class Unavailable(HeraldError):
    """Something this request needs from elsewhere cannot be reached now; retrying soon is fine."""

    status_code = 503
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}  # noqa: RUF012 (never changed)


class TooManyRequests(HeraldError):
    """A rate limit refused the request (see `src.ratelimit`); `Retry-After` says when one fits again."""

    status_code = 429

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HeraldError)
    async def _herald_error(_request: Request, exc: HeraldError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        """Where and what, without echoing the input: it may be a password, or text (a lone
        surrogate) that cannot even be encoded as JSON."""
        detail = [
            {
                "loc": [_printable(part) for part in error["loc"]],
                "msg": _printable(error["msg"]),
                "type": error["type"],
            }
            for error in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(sa_exc.OperationalError)
    @app.exception_handler(sa_exc.InterfaceError)
    @app.exception_handler(sa_exc.DisconnectionError)
    @app.exception_handler(sa_exc.TimeoutError)
    async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        """The database is down, restarting or saturated: say so at once, and that retrying is
        fine. Logged once per outage (see `src.outages`), not once per request."""
        outage = outages.pool if isinstance(exc, sa_exc.TimeoutError) else outages.database
        outage.failed(exc)
        return JSONResponse(
            {"detail": "the database is unavailable; retry shortly"},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )


def _printable(value: object) -> object:
    return value.encode("utf-8", "backslashreplace").decode() if isinstance(value, str) else value
