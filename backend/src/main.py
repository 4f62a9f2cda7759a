"""The ASGI app: `uvicorn src.main:app` from `backend/`."""

from fastapi import APIRouter, FastAPI

from src.auth.api import router as auth_router
from src.errors import install_error_handlers
from src.orgs.api import router as orgs_router
from src.tasks.api import router as tasks_router

app = FastAPI(
    title="Herald",
    description="Task tracker whose changes become reliably delivered emails and live notifications.",
)
install_error_handlers(app)

api = APIRouter(prefix="/api")
for router in (auth_router, orgs_router, tasks_router):
    api.include_router(router)
app.include_router(api)


@app.get("/healthz", tags=["ops"])
def healthz() -> dict[str, str]:
    return {"status": "ok"}
