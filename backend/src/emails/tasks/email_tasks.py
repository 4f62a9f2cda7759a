"""Celery tasks for email. Thin: each one asks `src.emails.service` to do the work.

`send_email_async` is what `EmailService.queue_email()` publishes after commit; `send_email_task`
sends exactly one given email over its own connection; `process_email_queue` is the beat job that
sends whatever is due (retries, emails whose wake-up was lost, expired claims of crashed workers).
"""

from src.celery_app import app
from src.config import settings
from src.emails import delivery


@app.task
def send_email_async(email_id: int, also: list[int] | None = None) -> int:
    """Send this email and those in `also` (committed since the last wake-up) first, then other due
    ones in the same batch, over the same SMTP connection."""
    return delivery.deliver([email_id, *(also or ())], fill=True).sent


@app.task
def send_email_task(email_id: int) -> int:
    """Send only this email (if it is due), over a connection of its own."""
    return delivery.deliver([email_id], fill=False).sent


@app.task
def process_email_queue(helpers: int | None = None) -> int:
    """Drain the outbox; when there is a backlog, start `helpers` more drainers on other workers."""
    extra = settings.email_processor_concurrency - 1 if helpers is None else helpers

    def start_helpers() -> None:
        for _ in range(extra):
            process_email_queue.delay(helpers=0)

    return delivery.process_queue(on_backlog=start_helpers)
