"""The ASGI app: `uvicorn src.main:app` from `backend/`."""

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote_plus

import anyio.to_thread
from fastapi import APIRouter, FastAPI
from fastapi_offline import FastAPIOffline

from src import gc_pacing, logs
from src.admission import AdmissionLimit
from src.auth.api import router as auth_router
from src.config import settings
from src.emails.api import router as emails_router
from src.emails.ses_webhook import router as ses_webhook_router
from src.emails.suppression_api import router as suppressions_router
from src.emails.webhooks import router as webhooks_router
from src.errors import install_error_handlers
from src.http_guards import ApiHeaders, BodyLimit
from src.invitations.api import router as invitations_router
from src.notifications.api import router as notifications_router
from src.notifications.api import ws_router as notifications_ws_router
from src.notifications.live import LiveHub
from src.notifications.sse import DirectBody
from src.ops.health import router as health_router
from src.ops.metrics import router as metrics_router
from src.orgs.api import router as orgs_router
from src.outages import fold_outage_tracebacks
from src.preferences.api import router as preferences_router
from src.preferences.pages import public_router as unsubscribe_router
from src.preferences.pages import router as preference_pages_router
from src.tasks.api import router as tasks_router
from src.tasks.page import router as task_page_router
from src.web.app import assets as web_assets
from src.web.app import router as web_router


class RedactTokens(logging.Filter):
    """Tokens travel in URLs: stream tokens in the query (EventSource cannot send headers), unsubscribe
    tokens in the path (a link in an email, valid for a year). Keep them out of the logs uvicorn writes
    URLs to: HTTP requests on `uvicorn.access`, WebSocket handshakes on `uvicorn.error`. A query
    parameter is matched by its decoded name, so `?tok%65n=` is redacted too."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


_QUERY_PARAM = re.compile(r"([?&][^=&\s]*=)([^&\s]*)")
_UNSUBSCRIBE_TOKEN = re.compile(r"(/unsubscribe/)[^/?#\s]+")


def _redacted(text: str) -> str:
    return _UNSUBSCRIBE_TOKEN.sub(r"\1[redacted]", _QUERY_PARAM.sub(_redact_token, text))


def _redact_token(match: re.Match[str]) -> str:
    name = match.group(1)
    return f"{name}[redacted]" if unquote_plus(name[1:-1]).strip().lower() == "token" else match.group(0)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
    fold_outage_tracebacks(logging.getLogger("uvicorn.error"))
    # Sync endpoints run on this many threads; the pool has a connection for each (see src.db).
    anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
    gc_pacing.configure()
    collector = asyncio.create_task(gc_pacing.collect_when_quiet(), name="herald-gc")
    app.state.hub = LiveHub()
    await app.state.hub.start()
    app.state.hub.drain_on_exit_signals()
    yield
    await app.state.hub.stop()
    collector.cancel()


_APP: dict[str, Any] = {
    "title": "Herald",
    "description": "Task tracker whose changes become reliably delivered emails and live notifications.",
    "lifespan": lifespan,
}
# The schema and its pages tell a visitor every route and field: not served in production unless asked.
# Served, their scripts and styles come from fastapi-offline's files, not a CDN, so they work offline;
# with no validator URL, no Swagger UI layout can fetch validator.swagger.io's badge for our schema.
if not settings.is_production or settings.docs_in_production:
    app = FastAPIOffline(**_APP, swagger_ui_parameters={"validatorUrl": None})
else:
    app = FastAPI(**_APP, openapi_url=None)
install_error_handlers(app)
app.add_middleware(AdmissionLimit, limit=settings.api_threads)
app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
app.add_middleware(ApiHeaders)  # on every answer, errors included
app.add_middleware(logs.RequestIds)  # the id is in context for everything below, and answered

# Outermost of all, outside even Starlette's error middleware (which wraps `send` too): live streams
# send their body chunks to the server's own `send`, past every wrapper (see sse.py).
_build_middleware_stack = app.build_middleware_stack
app.build_middleware_stack = lambda: DirectBody(_build_middleware_stack())  # type: ignore[method-assign]

api = APIRouter(prefix="/api")
# Routes are matched in this order, one by one. The notification streams come first: thousands open
# at once when a process restarts, and matching the routes before them cost 6 % of the CPU an API
# process spends opening one.
for router in (
    notifications_router,
    notifications_ws_router,
    auth_router,
    orgs_router,
    invitations_router,
    tasks_router,
    emails_router,
    suppressions_router,
    webhooks_router,
    ses_webhook_router,
    preferences_router,
):
    api.include_router(router)
app.include_router(api)
app.include_router(metrics_router)
app.include_router(health_router)
app.include_router(task_page_router)  # where status emails link, outside /api
app.include_router(preference_pages_router)  # where emails' unsubscribe and preferences links lead
app.include_router(unsubscribe_router)  # the one-click POST, in the schema
app.include_router(web_router)  # the web app at `/`, its files under /assets
app.mount("/assets", web_assets, name="assets")
