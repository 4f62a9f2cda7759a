"""The one Celery app: `celery -A src.celery_app worker|beat|inspect` from `backend/`.

Delivery state lives in the database; Redis only carries wake-up calls. Hence late acks (a killed
worker's message is redelivered), one prefetched message per process, and a visibility timeout
longer than any email claim lease so Redis never redelivers work whose claim is still alive.
"""

import logging
from typing import Any

from celery import Celery, signals
from kombu import Queue

from src.config import settings
from src.outages import fold_outage_tracebacks
from src.redis_client import celery_transport_options

app = Celery(
    "herald",
    broker=settings.redis_url,
    backend=settings.redis_url,
    include=[
        "src.emails.tasks.email_tasks",
        "src.notifications.tasks.notification_tasks",
        "src.idempotency.tasks.idempotency_tasks",
        "src.preferences.tasks.digest_tasks",
    ],
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_queues=[Queue(name, routing_key=name) for name in ("emails", "notifications", "default")],
    task_default_queue="default",
    task_routes={
        "src.emails.tasks.*": {"queue": "emails"},
        "src.notifications.tasks.*": {"queue": "notifications"},
    },
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    result_backend_transport_options=celery_transport_options(),
    broker_transport_options={
        **celery_transport_options(),
        "visibility_timeout": settings.email_lease_seconds * 4,
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
    },
    # Publishing happens after a commit; a Redis outage must not stall the caller for long.
    task_publish_retry_policy={
        "max_retries": 2,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.5,
    },
    # Task events cost three extra Redis messages per task; Flower turns them on in the workers
    # while it runs (its --enable_events, on by default), so nothing needs them on otherwise.
    worker_send_task_events=False,
    task_send_sent_event=False,
    beat_schedule={
        "process-email-queue": {
            "task": "src.emails.tasks.email_tasks.process_email_queue",
            "schedule": settings.email_queue_interval,
        },
        "publish-notifications": {
            "task": "src.notifications.tasks.notification_tasks.publish_notifications",
            "schedule": settings.notification_publish_interval,
        },
        "build-digests": {
            "task": "src.preferences.tasks.digest_tasks.build_digests",
            "schedule": settings.email_digest_check_seconds,
        },
        "delete-expired-idempotency-keys": {
            "task": "src.idempotency.tasks.idempotency_tasks.delete_expired_idempotency_keys",
            "schedule": 3600,  # hourly; a key lives 24 h
        },
    },
    timezone="UTC",
)


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _fold_outage_tracebacks(logger: logging.Logger, **_kwargs: Any) -> None:
    """A database or Redis restart makes every task fail alike: say it once, not per task."""
    fold_outage_tracebacks(logger)


celery_app = app
