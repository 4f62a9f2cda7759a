"""`GET /metrics` for Prometheus: the outbox and the live layer, read at scrape time.

Counts come from the database (shared by every process), so any API process answers for all;
`herald_live_streams` and `herald_live_hub_lag` are this process's own. Scrapers authenticate with
`Authorization: Bearer $METRICS_TOKEN`; without METRICS_TOKEN configured the endpoint is closed.
"""

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request, status
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select

from src.config import settings
from src.db import SessionLocal, utcnow
from src.emails.models import EmailQueue, EmailStatus, Suppression
from src.emails.service import EmailService
from src.notifications.live import LiveHub
from src.notifications.models import Notification
from src.notifications.service import last_seq

router = APIRouter(tags=["ops"])


class HeraldCollector:
    def __init__(self, hub: LiveHub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        with SessionLocal() as session:
            counts = EmailService.stats(session)
            oldest = session.scalar(
                select(func.min(EmailQueue.next_attempt_at)).where(EmailQueue.status == EmailStatus.pending)
            )
            unpublished = session.scalar(select(func.count()).where(Notification.seq.is_(None))) or 0
            suppressed = session.scalar(select(func.count()).select_from(Suppression)) or 0
            given_out = last_seq(session)
        emails = GaugeMetricFamily("herald_emails", "Emails in the outbox, by status", labels=["status"])
        for email_status, count in counts.items():
            emails.add_metric([email_status], count)
        yield emails
        overdue = max(0.0, (utcnow() - oldest).total_seconds()) if oldest else 0.0
        yield GaugeMetricFamily(
            "herald_email_oldest_due_seconds",
            "How long the longest-waiting due email has been due",
            value=overdue,
        )
        yield GaugeMetricFamily(
            "herald_email_suppressions",
            "Addresses no email goes to: refused for good, bounced, dropped or reported as spam",
            value=suppressed,
        )
        yield GaugeMetricFamily(
            "herald_notifications_unpublished",
            "Notifications committed but not yet published",
            value=unpublished,
        )
        yield GaugeMetricFamily(
            "herald_live_streams", "Open SSE/WebSocket streams on this process",
            value=sum(len(s) for s in self.hub.by_user.values()),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "herald_live_hub_lag", "Notifications given out but not yet dispatched by this process",
            value=max(0, given_out - self.hub.cursor),
        )  # fmt: skip


@router.get("/metrics", response_class=Response)
def metrics(request: Request, authorization: Annotated[str | None, Header()] = None) -> Response:
    """Prometheus text format; needs `Authorization: Bearer $METRICS_TOKEN`."""
    expected = f"Bearer {settings.metrics_token}"
    if not settings.metrics_token or not hmac.compare_digest(
        (authorization or "").encode(), expected.encode()
    ):
        detail = (
            "metrics need a bearer token" if settings.metrics_token else "metrics are off: set METRICS_TOKEN"
        )
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HeraldCollector(request.app.state.hub))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
