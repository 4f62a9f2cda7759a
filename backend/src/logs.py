"""Log lines that can be followed across processes: a request id from the API to the SMTP reply.

Every request has an id (its `X-Request-ID` when it brings a sane one, else a new one), returned in
the response's `X-Request-ID`, stored on the email rows it queues and sent along with the Celery
tasks it publishes. Log records carry it, with the caller's user id and, in workers, the task's name
and id. `LOG_FORMAT=json` writes one JSON object per line (API, worker and beat alike); the default
is text, as before.
"""

import logging
import re
import uuid
from contextvars import ContextVar

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from src.config import settings

HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # anything else is replaced: it goes into logs and rows


class RequestContext:
    """Mutable, so what a dependency learns on its worker thread (the user) reaches later log lines:
    each thread hop copies the context variables, not the object they point to. In a Celery task, also
    the task's name and id, set when it starts: asking Celery for the current task on every record
    cost a worker about 3 % of its CPU while sending emails (a line each)."""

    def __init__(self, request_id: str, task_name: str | None = None, task_id: str | None = None) -> None:
        self.request_id = request_id
        self.user_id: int | None = None
        self.task_name = task_name
        self.task_id = task_id


_context: ContextVar[RequestContext | None] = ContextVar("herald_request", default=None)


def current_request_id() -> str | None:
    context = _context.get()
    return context.request_id if context else None


def set_user(user_id: int) -> None:
    context = _context.get()
    if context is not None:
        context.user_id = user_id


def enter_request(
    request_id: str | None, task_name: str | None = None, task_id: str | None = None
) -> RequestContext:
    """Start (or, in a worker's task, resume) a request's context; a missing or unsafe id gets a new
    one."""
    if request_id is None or not _SANE_ID.fullmatch(request_id):
        request_id = uuid.uuid4().hex
    context = RequestContext(request_id, task_name, task_id)
    _context.set(context)
    return context


def leave_request() -> None:
    _context.set(None)


class RequestIds:
    """ASGI middleware: the request's id in context and in the response's headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(HEADER.lower().encode())
        context = enter_request(incoming.decode("latin-1") if incoming else None)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = context.request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class ContextFields(logging.Filter):
    """Adds request_id and user_id (and, in a Celery task, its name and id) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get()
        record.request_id = getattr(record, "request_id", None) or (context.request_id if context else None)
        record.user_id = getattr(record, "user_id", None) or (context.user_id if context else None)
        if not hasattr(record, "task_name"):
            record.task_name = context.task_name if context else None
            record.task_id = context.task_id if context else None
        return True


def formatter() -> logging.Formatter:
    """The API's (uvicorn's `--log-config log_config.json`) and the Celery processes' formatter."""
    if settings.log_format == "json":
        return JsonFormatter(
            "{asctime}{levelname}{name}{message}{request_id}{user_id}{task_name}{task_id}",
            style="{",
            rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],  # uvicorn's copy with terminal colours
        )
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def install(*loggers: logging.Logger) -> None:
    """Context fields on the handlers of `loggers` and of the root logger, and with LOG_FORMAT=json
    the JSON formatter: for Celery, which sets its handlers up itself (more than once)."""
    logging.captureWarnings(settings.log_format == "json")  # warnings become records too
    for logger in (*loggers, logging.getLogger()):
        for handler in logger.handlers:
            if not any(isinstance(f, ContextFields) for f in handler.filters):
                handler.addFilter(ContextFields())
            if settings.log_format == "json" and not isinstance(handler.formatter, JsonFormatter):
                handler.setFormatter(formatter())
