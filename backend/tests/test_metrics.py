from src.config import settings
from src.db import SessionLocal
from src.emails.service import EmailService


def test_metrics_are_closed_without_a_token(client, monkeypatch):
    monkeypatch.setattr(settings, "metrics_token", "")
    response = client.get("/metrics", headers={"Authorization": "Bearer "})
    assert response.status_code == 401 and response.json()["detail"] == "metrics are off: set METRICS_TOKEN"


def test_metrics_report_the_outbox_to_the_scraper(client, monkeypatch):
    monkeypatch.setattr(settings, "metrics_token", "scrape-secret")
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    with SessionLocal() as session:
        for n in range(2):
            EmailService.queue_email(
                session, to_email=f"u{n}@example.com", subject="s", body_text="b", wake_worker=False
            )
        session.commit()
    response = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    assert 'herald_emails{status="pending"} 2.0' in lines
    assert 'herald_emails{status="sent"} 0.0' in lines
    assert 'herald_emails{status="suppressed"} 0.0' in lines
    assert "herald_email_suppressions 0.0" in lines
    assert any(line.startswith("herald_email_oldest_due_seconds ") for line in lines)
    assert "herald_notifications_unpublished 0.0" in lines
    assert "herald_live_streams 0.0" in lines
