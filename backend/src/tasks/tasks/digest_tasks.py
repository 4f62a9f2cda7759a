"""The beat job that queues digests whose window has closed. Thin: `src.tasks.digests` works."""

from datetime import datetime

from src.celery_app import app
from src.tasks import digests


@app.task
def build_digests(as_of: str | None = None) -> int:
    """Queue the digests due now, or as of `as_of` (ISO 8601 with a zone: replaying a missed run)."""
    return digests.build_due(datetime.fromisoformat(as_of) if as_of else None)
