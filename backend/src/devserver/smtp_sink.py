"""A local SMTP server that keeps every message it accepts: the mail sink of `make run` and the tests.

Run it alone with `python -m src.devserver.smtp_sink --port 1025 --maildir .run/mail`; every accepted
message is written there as an `.eml` file and logged. Tests script failures by queueing replies
(`sink.replies.append("421 try later")`): each queued reply answers one DATA instead of accepting it
(`sink.rcpt_replies`: one RCPT).
"""

import argparse
import asyncio
import json
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from src.devserver.redis_server import free_port

log = logging.getLogger("herald.smtp_sink")
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    peer: object = None  # the client's (address, port): one per SMTP connection
    received_at: float = field(default_factory=time.time)

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.raw, policy=policy.default)  # type: ignore[return-value]


class RecordingHandler:
    def __init__(self, maildir: Path | None = None, journal: Path | None = None) -> None:
        self.messages: list[ReceivedMail] = []
        self.replies: deque[str] = deque()
        self.rcpt_replies: deque[str] = deque()
        self.data_delay = 0.0  # seconds before answering DATA: a slow server, for tests
        self.quits = 0  # connections the client closed politely
        self.pipelining = True  # advertised, as mail servers do: aiosmtpd reads commands in order
        self.maildir = maildir
        self.journal = journal.open("a", buffering=1) if journal else None
        self._lock = threading.Lock()
        if maildir:
            maildir.mkdir(parents=True, exist_ok=True)

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt_replies.popleft() if self.rcpt_replies else "250 OK"
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.quits += 1
        return "221 Bye"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.replies:
            return self.replies.popleft()
        raw = envelope.original_content or b""
        mail = ReceivedMail(envelope.mail_from or "", list(envelope.rcpt_tos), raw, session.peer)
        with self._lock:
            self.messages.append(mail)
            count = len(self.messages)
        if self.maildir:
            (self.maildir / f"{int(mail.received_at * 1000)}-{count:06d}.eml").write_bytes(raw)
            log.info("mail to %s: %s", ", ".join(mail.rcpt_tos), mail.message["Subject"])
        if self.journal:
            found = _MESSAGE_ID.search(raw)
            message_id = found.group(1).decode() if found else None
            record = {"message_id": message_id, "to": mail.rcpt_tos, "at": mail.received_at}
            self.journal.write(json.dumps(record) + "\n")
        return "250 Message accepted for delivery"


class SmtpSink:
    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        maildir: Path | None = None,
        journal: Path | None = None,
    ) -> None:
        self.handler = RecordingHandler(maildir, journal)
        self.controller = Controller(self.handler, hostname=host, port=port or free_port())
        self.running = False

    @property
    def port(self) -> int:
        return self.controller.port

    @property
    def messages(self) -> list[ReceivedMail]:
        return self.handler.messages

    @property
    def replies(self) -> deque[str]:
        return self.handler.replies

    @property
    def rcpt_replies(self) -> deque[str]:
        return self.handler.rcpt_replies

    def start(self) -> "SmtpSink":
        self.controller.start()
        self.running = True
        return self

    def stop(self) -> None:
        if self.running:  # stopping a stopped sink is no error
            self.controller.stop()
            self.running = False

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMail]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1025)
    parser.add_argument("--maildir", type=Path, help="write each message here as an .eml file")
    parser.add_argument("--journal", type=Path, help="append one JSON line per message here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-connection chatter
    handler = RecordingHandler(args.maildir, args.journal)
    controller = Controller(handler, hostname=args.host, port=args.port)
    controller.start()
    log.info("SMTP sink listening on %s:%d", args.host, args.port)
    try:
        asyncio.run(asyncio.Event().wait())
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
