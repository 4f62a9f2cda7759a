"""The ASGI app: `uvicorn src.main:app` from `backend/`."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from src.auth.api import router as auth_router
from src.config import settings
from src.errors import install_error_handlers
from src.notifications.api import router as notifications_router
from src.notifications.api import ws_router as notifications_ws_router
from src.notifications.live import LiveHub
from src.orgs.api import router as orgs_router
from src.tasks.api import router as tasks_router


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.hub = LiveHub(settings.redis_url)
    await app.state.hub.start()
    app.state.hub.drain_on_exit_signals()
    yield
    await app.state.hub.stop()


app = FastAPI(
    title="Herald",
    description="Task tracker whose changes become reliably delivered emails and live notifications.",
    lifespan=lifespan,
)
install_error_handlers(app)

api = APIRouter(prefix="/api")
for router in (auth_router, orgs_router, tasks_router, notifications_router, notifications_ws_router):
    api.include_router(router)
app.include_router(api)


@app.get("/healthz", tags=["ops"])
def healthz() -> dict[str, str]:
    return {"status": "ok"}
