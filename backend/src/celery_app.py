"""The one Celery app: `celery -A src.celery_app worker|beat|inspect` from `backend/`.

Delivery state lives in the database; the broker (Redis, or RabbitMQ with CELERY_BROKER_URL) only
carries wake-up calls. Hence late acks (a killed worker's message is redelivered) and one prefetched
message per process. How the broker takes back an unacknowledged message differs: see
`broker_transport_options`.
"""

import logging
from typing import Any
from urllib.parse import urlsplit

from celery import Celery, signals
from celery.schedules import crontab
from kombu import Queue

from src import logs
from src.config import settings
from src.outages import fold_outage_tracebacks
from src.redis_client import celery_transport_options


def broker_transport_options(broker_url: str) -> dict[str, object]:
    """Redis has no acknowledgements: it redelivers a message unacknowledged after the visibility
    timeout, so that is kept far above an email claim's lease (a live claim is never redelivered).
    RabbitMQ returns a message to the queue as soon as the worker holding it disconnects (a killed
    worker's claims then wait for their lease to end), and closes the channel of a consumer that holds
    one longer than its `consumer_timeout` (30 min by default): keep that above the longest task, a
    queue run of EMAIL_QUEUE_INTERVAL plus one batch. Either way a redelivered wake-up only finds claims
    still held, or sends what is due: the database decides, never the broker."""
    if urlsplit(broker_url).scheme not in ("redis", "rediss", "sentinel", "unix"):
        return {}
    return {
        **celery_transport_options(),
        "visibility_timeout": settings.email_lease_seconds * 4,
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
    }


app = Celery(
    "herald",
    broker=settings.broker_url,
    backend=settings.redis_url,
    include=[
        "src.emails.tasks.email_tasks",
        "src.notifications.tasks.notification_tasks",
        "src.idempotency.tasks.idempotency_tasks",
        "src.ops.retention",
        "src.tasks.tasks.digest_tasks",
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
    broker_transport_options=broker_transport_options(settings.broker_url),
    # Publishing happens after a commit; a broker outage must not stall the caller for long.
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
            "task": "src.tasks.tasks.digest_tasks.build_digests",
            "schedule": settings.email_digest_check_seconds,
        },
        "delete-expired-idempotency-keys": {
            "task": "src.idempotency.tasks.idempotency_tasks.delete_expired_idempotency_keys",
            "schedule": 3600,  # hourly; a key lives 24 h
        },
        "retention": {
            "task": "src.ops.retention.purge_expired_records",
            "schedule": crontab(hour=3, minute=17),  # daily, at a quiet hour (UTC)
        },
    },
    timezone="UTC",
)


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _set_up_log_handlers(logger: logging.Logger, **_kwargs: Any) -> None:
    """A database or Redis restart makes every task fail alike: say it once, not per task. And
    request ids, task names and LOG_FORMAT=json, as in the API."""
    fold_outage_tracebacks(logger)
    logs.install(logger)


@signals.celeryd_after_setup.connect
def _no_banner_in_json(instance: Any, **_kwargs: Any) -> None:
    """With LOG_FORMAT=json every line a worker writes is a JSON object: no startup banner."""
    if settings.log_format == "json":
        instance.quiet = True


@signals.before_task_publish.connect
def _send_request_id(headers: dict[str, Any], **_kwargs: Any) -> None:
    """A task published while serving a request carries its id to the worker."""
    request_id = logs.current_request_id()
    if request_id:
        headers.setdefault("request_id", request_id)


@signals.task_prerun.connect
def _enter_request(task: Any, **_kwargs: Any) -> None:
    logs.enter_request(getattr(task.request, "request_id", None), task.name, task.request.id)


@signals.task_postrun.connect
def _leave_request(**_kwargs: Any) -> None:
    logs.leave_request()


celery_app = app
