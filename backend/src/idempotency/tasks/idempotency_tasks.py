"""Celery tasks for idempotency keys. Thin: the work is in the service."""

from src.celery_app import app
from src.db import SessionLocal
from src.idempotency import service


@app.task
def delete_expired_idempotency_keys() -> int:
    """The beat job that keeps `idempotency_keys` small: an expired key counts as new anyway."""
    with SessionLocal() as session:
        return service.delete_expired(session)
