"""Domain errors that services raise and the API turns into JSON responses."""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class HeraldError(Exception):
    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(HeraldError):
    status_code = 404


class Forbidden(HeraldError):
    status_code = 403


class Conflict(HeraldError):
    status_code = 409


class Invalid(HeraldError):
    status_code = 422


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HeraldError)
    async def _herald_error(_request: Request, exc: HeraldError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
