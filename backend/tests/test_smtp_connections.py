"""A worker process keeps its SMTP connection across deliveries: checked before reuse, closed when idle."""

import time

import pytest

from src.devserver.smtp_sink import SmtpSink
from src.emails import connections
from src.emails.connections import kept_connections
from src.emails.delivery import deliver
from tests.test_emails import attempts_of, queue, wait_until


@pytest.fixture
def private_sink(db, monkeypatch):
    """A sink of this test's own, which the test may stop and replace on the same port."""
    from src.config import settings

    kept_connections.close_all()
    sink = SmtpSink().start()
    monkeypatch.setattr(settings, "smtp_host", "127.0.0.1")
    monkeypatch.setattr(settings, "smtp_port", sink.port)
    monkeypatch.setattr(settings, "smtp_use_tls", False)
    yield sink
    kept_connections.close_all()
    sink.stop()


def deliver_one_by_one(email_ids):
    for email_id in email_ids:
        assert deliver([email_id], fill=False).sent == 1


def test_deliveries_in_one_process_share_one_connection(private_sink):
    deliver_one_by_one(queue(3, publish=False))
    assert len(private_sink.messages) == 3
    assert len({mail.peer for mail in private_sink.messages}) == 1
    assert private_sink.handler.quits == 0  # still open, kept for the next delivery


def test_with_smtp_idle_seconds_zero_each_delivery_closes_its_connection(private_sink, monkeypatch):
    from src.config import settings

    monkeypatch.setattr(settings, "smtp_idle_seconds", 0)
    deliver_one_by_one(queue(2, publish=False))
    assert len({mail.peer for mail in private_sink.messages}) == 2
    assert private_sink.handler.quits == 2


def test_a_connection_the_server_dropped_is_replaced_without_costing_an_attempt(private_sink, monkeypatch):
    first, second = queue(2, publish=False)
    deliver_one_by_one([first])
    private_sink.stop()  # the server goes away, and the kept connection with it
    replacement = SmtpSink(port=private_sink.port).start()
    try:
        monkeypatch.setattr(connections, "CHECK_AFTER_SECONDS", 0.0)
        deliver_one_by_one([second])
        assert len(replacement.messages) == 1
        assert attempts_of(second) == [("sent", 250)]
    finally:
        replacement.stop()


def test_an_unused_connection_is_closed_after_smtp_idle_seconds(private_sink, monkeypatch):
    from src.config import settings

    monkeypatch.setattr(settings, "smtp_idle_seconds", 0.5)
    deliver_one_by_one(queue(1, publish=False))
    started = time.monotonic()
    wait_until(lambda: private_sink.handler.quits == 1, timeout=5, message="the idle connection closed")
    assert time.monotonic() - started >= 0.3  # kept a while, not closed at once
