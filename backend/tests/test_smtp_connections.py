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


# --- RFC 2920 pipelining: MAIL, RCPT and DATA in one write when the server advertises it -----------


def envelope_arrivals(sink):
    """For each MAIL the server reads: whether RCPT and DATA had already arrived behind it."""
    seen = []

    async def handle_MAIL(server, session, envelope, address, options):
        seen.append(b"RCPT TO:" in server._reader._buffer and b"DATA\r\n" in server._reader._buffer)
        envelope.mail_from = address
        return "250 OK"

    sink.handler.handle_MAIL = handle_MAIL
    return seen


@pytest.mark.parametrize("pipelining", [True, False])
def test_the_envelope_is_pipelined_only_to_a_server_that_advertises_it(private_sink, pipelining):
    private_sink.handler.pipelining = pipelining
    together = envelope_arrivals(private_sink)
    deliver_one_by_one(queue(2, publish=False))
    assert together == [pipelining, pipelining]
    assert [m.rcpt_tos for m in private_sink.messages] == [["user0@example.com"], ["user1@example.com"]]


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_refused_recipient_leaves_the_connection_in_step_for_the_next_email(private_sink, pipelining):
    private_sink.handler.pipelining = pipelining
    private_sink.rcpt_replies.append("550 5.1.1 no such user")
    first, second = queue(2, publish=False)
    assert deliver([first, second], fill=False).sent == 1
    assert attempts_of(first) == [("permanent", 550)]
    assert attempts_of(second) == [("sent", 250)]
    assert [m.rcpt_tos for m in private_sink.messages] == [["user1@example.com"]]
    assert len({m.peer for m in private_sink.messages}) == 1 and private_sink.handler.quits == 0


def test_a_server_that_takes_data_after_refusing_the_recipient_gets_an_empty_message(private_sink):
    """RFC 2920 3.1: with every recipient refused, a pipelined DATA the server accepts all the same is
    ended with a lone dot; the connection goes on."""
    refused = []

    async def handle_RCPT(server, session, envelope, address, options):
        if not refused:
            refused.append(address)
            envelope.rcpt_tos.append(address)  # as a lax server would: DATA then answers 354
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    private_sink.handler.handle_RCPT = handle_RCPT
    first, second = queue(2, publish=False)
    assert deliver([first, second], fill=False).sent == 1
    assert attempts_of(first) == [("permanent", 550)]
    assert attempts_of(second) == [("sent", 250)]
    empty, sent = private_sink.messages
    assert empty.raw == b"" and sent.rcpt_tos == ["user1@example.com"]
    assert empty.peer == sent.peer
