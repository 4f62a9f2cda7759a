"""The `Idempotency-Key` header for endpoints that create something: a client that did not hear the
answer can send the request again and get that answer, with nothing created twice.

A route takes `idempotent: Idempotent` and wraps the work: `return idempotent.run(lambda: ...)`.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Header, HTTPException, Request, status
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from src.auth.deps import CurrentUser, DbSession
from src.idempotency import service

log = logging.getLogger("herald.idempotency")

Model = TypeVar("Model", bound=BaseModel)


@dataclass
class Idempotency:
    """One request's key, if it sent one. `run()` claims it, in the same thread hop and transaction
    as the work: a transaction left open between FastAPI's hops would hold its connection (or
    SQLite's write lock) while waiting for a thread."""

    session: Session
    user_id: int
    key: str | None
    request_fingerprint: str
    status_code: int

    def run(self, make: Callable[[], Model]) -> Model | Response:
        """The stored answer to replay, or `make()`'s answer; with a key, that answer is stored for
        the retries."""
        if self.key is None:
            return make()
        replay = self._claim()
        if replay is not None:
            return replay
        # `make()` commits the work together with the key's row; on an error both roll back.
        body = make().model_dump(mode="json")
        try:
            service.store_response(self.session, self.user_id, self.key, self.status_code, body)
        except SQLAlchemyError:  # the work is committed: answer it; retries get 409 until the key expires
            log.exception(
                "could not store the answer for Idempotency-Key %r of user %s", self.key, self.user_id
            )
        return JSONResponse(body, self.status_code)

    def _claim(self) -> Response | None:
        assert self.key is not None
        existing = service.claim(self.session, self.user_id, self.key, self.request_fingerprint)
        if existing is None:
            return None
        if existing.request_fingerprint != self.request_fingerprint:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                "Idempotency-Key was already used with a different request",
            )
        if existing.status_code is None:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                "a request with this Idempotency-Key is in progress",
                headers={"Retry-After": "1"},
            )
        return JSONResponse(
            existing.response_body, existing.status_code, headers={"Idempotent-Replayed": "true"}
        )


async def _request_fingerprint(request: Request) -> str:
    return service.fingerprint(request.method, request.url.path, await request.body())


async def idempotency(
    request: Request,
    user: CurrentUser,
    session: DbSession,
    request_fingerprint: Annotated[str, Depends(_request_fingerprint)],
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=r"^[ -~]{1,255}$",
            description="1 to 255 printable ASCII characters; a retry with the same key within 24 h "
            "gets the first answer (with `Idempotent-Replayed: true`) and creates nothing again.",
        ),
    ] = None,
) -> Idempotency:
    """The request's key and fingerprint; nothing touches the database here."""
    route = request.scope["route"]
    assert isinstance(route, APIRoute)
    return Idempotency(session, user.id, key, request_fingerprint, route.status_code or status.HTTP_200_OK)


Idempotent = Annotated[Idempotency, Depends(idempotency)]
