"""Where emails go: SMTP, or the console when no SMTP_HOST is set.

A backend opens a connection; a connection sends one message at a time and raises `DeliveryError`
saying whether the failure is worth retrying. SendGrid's HTTP API and Amazon SES (`ses.py`) are
others; a provider plugs in the same way: a class with `connect()` and a name in `BACKENDS`.
"""

import functools
import logging
import re
import smtplib
import socket
import ssl
from collections.abc import Callable, Hashable
from email import message_from_bytes, policy
from typing import Protocol

import httpx

from src.config import Settings

log = logging.getLogger("herald.emails")


class DeliveryError(Exception):
    def __init__(self, reason: str, *, permanent: bool, code: int | None = None, broken: bool = False,
                 bad_address: bool = False):  # fmt: skip
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.code = code
        self.broken = broken  # the connection is unusable; open a new one for the next message
        self.bad_address = bad_address  # the recipient can never receive mail: suppress the address


_LINE_STARTING_WITH_DOT = re.compile(rb"(?m)^\.")

# The replies that let a message go on, to MAIL, RCPT and DATA.
_ENVELOPE_ACCEPTED = [(250,), (250, 251), (354,)]

# RFC 3463's enhanced status code at the start of a reply: class 5 (permanent), subject, detail.
_ENHANCED_STATUS = re.compile(r"5\.(\d{1,3})\.(\d{1,3})\b")


def address_rejected(code: int, reply: str) -> bool:
    """Whether a server's refusal of RCPT TO says the address itself will never take mail: a 5xx
    whose enhanced status is about the address (5.1.x: no such user or domain) or a disabled
    mailbox (5.2.1), or, without one, 550, 551 or 553. A policy refusal (5.7.x: relaying denied,
    our server blocked) or a full mailbox (5.2.2) says nothing lasting about the address."""
    if not 500 <= code < 600:
        return False
    enhanced = _ENHANCED_STATUS.match(reply.strip())
    if enhanced:
        return enhanced[1] == "1" or (enhanced[1], enhanced[2]) == ("2", "1")
    return code in (550, 551, 553)


def nothing_to_wait_for() -> None:
    pass


class Connection(Protocol):
    def send(self, sender: str, recipient: str, message: bytes,
             before_accept: Callable[[], None] = nothing_to_wait_for) -> None:  # fmt: skip
        """Send one message. `before_accept` runs before the server can take the message, at a moment
        the sender would wait anyway; an exception from it stops the send, with the message not
        delivered."""
        ...

    def alive(self) -> bool:
        """Whether a connection kept since its last message can still send (see `connections`)."""
        ...

    def close(self) -> None: ...


class EmailBackend(Protocol):
    def connect(self) -> Connection: ...

    def key(self) -> Hashable:
        """Equal for backends that would connect to the same place the same way."""
        ...


def _reply_text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Loading the CA bundle takes tens of milliseconds: once per process, not per connection."""
    return ssl.create_default_context()


class SmtpConnection:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        try:
            if settings.smtp_use_ssl:
                self.smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    settings.smtp_host,
                    settings.smtp_port,
                    timeout=settings.smtp_timeout,
                    context=_tls_context(),
                )
            else:
                self.smtp = smtplib.SMTP(
                    settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout
                )
            # Each write is a whole step (the envelope, or the message with its dot) and waits for a
            # reply: Nagle's algorithm would only hold a write's tail back for an acknowledgement.
            self.smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.smtp.ehlo()
            if settings.smtp_use_tls:
                self.smtp.starttls(context=_tls_context())
                self.smtp.ehlo()
            if settings.smtp_user:
                self.smtp.login(settings.smtp_user, settings.smtp_password)
            # RFC 2920: MAIL, RCPT and DATA go out together and their replies are read after, so a
            # message costs two round trips instead of four (mail servers advertise it widely).
            self.pipelining = self.smtp.has_extn("pipelining")
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(
                f"SMTP connect to {settings.smtp_host}:{settings.smtp_port} failed: "
                f"{exc.smtp_code} {_reply_text(exc.smtp_error)}",
                permanent=False,
                code=exc.smtp_code,
                broken=True,
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(
                f"SMTP connect to {settings.smtp_host}:{settings.smtp_port} failed: {exc!r}",
                permanent=False,
                broken=True,
            ) from exc

    def send(self, sender: str, recipient: str, message: bytes,
             before_accept: Callable[[], None] = nothing_to_wait_for) -> None:  # fmt: skip
        try:
            self._transmit(sender, recipient, message, before_accept)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()))
            refusal = self._refused(f"recipient refused: {code} {_reply_text(reply)}", code)
            refusal.bad_address = address_rejected(code, _reply_text(reply))
            raise refusal from exc
        except smtplib.SMTPResponseException as exc:
            code = exc.smtp_code
            raise self._refused(f"SMTP error: {code} {_reply_text(exc.smtp_error)}", code) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"SMTP connection lost: {exc!r}", permanent=False, broken=True) from exc

    def _transmit(self, sender: str, recipient: str, message: bytes, before_accept: Callable[[], None]
                  ) -> None:  # fmt: skip
        """`sendmail()`'s MAIL, RCPT and DATA, then the message. `before_accept` runs while the
        server reads the envelope: the caller writes the previous outcome in that round trip."""
        self._envelope(sender, recipient, before_accept)
        body = _LINE_STARTING_WITH_DOT.sub(b"..", message)  # RFC 5321 4.5.2 transparency
        self.smtp.send((body if body.endswith(b"\r\n") else body + b"\r\n") + b".\r\n")
        code, reply = self.smtp.getreply()
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)

    def _envelope(self, sender: str, recipient: str, while_waiting: Callable[[], None]) -> None:
        """MAIL, RCPT and DATA, raising as `sendmail()` does for the first one refused; `while_waiting`
        runs once the first command is out. Pipelined, all three replies are read whatever they
        say, so the next command meets a server in step."""
        # Both addresses are validated ASCII already: smtplib's mail() and rcpt() would parse them again.
        commands = [f"MAIL FROM:<{sender}>", f"RCPT TO:<{recipient}>", "DATA"]
        replies: list[tuple[int, bytes]] = []
        if self.pipelining:
            self.smtp.send("".join(f"{command}\r\n" for command in commands))
            while_waiting()
            for _ in commands:
                replies.append(self.smtp.getreply())
                if replies[-1][0] == 421:  # the server has hung up
                    break
        else:
            for command, accepted in zip(commands, _ENVELOPE_ACCEPTED, strict=True):
                self.smtp.putcmd(command)
                if not replies:
                    while_waiting()
                replies.append(self.smtp.getreply())
                if replies[-1][0] not in accepted:
                    break
        refused = next((i for i, (code, _) in enumerate(replies) if code not in _ENVELOPE_ACCEPTED[i]), None)
        if refused is None:
            return
        if refused == 2:
            raise smtplib.SMTPDataError(*replies[2])
        if replies[-1][0] == 354:  # a server that took DATA all the same: end it with no message
            self.smtp.send(b".\r\n")
            self.smtp.getreply()
        if refused == 0:
            raise smtplib.SMTPSenderRefused(*replies[0], sender)
        raise smtplib.SMTPRecipientsRefused({recipient: replies[1]})

    def _refused(self, reason: str, code: int) -> DeliveryError:
        """The server said no. After a 421 it closes the connection (smtplib already has); otherwise
        the connection goes on, if it can be reset for the next message."""
        broken = code == 421 or not self._reset()
        return DeliveryError(reason, permanent=code >= 500, code=code, broken=broken)

    def _reset(self) -> bool:
        """Make the connection ready for the next message; False when it cannot be."""
        try:
            self.smtp.rset()
            return True
        except (OSError, smtplib.SMTPException):
            return False

    def alive(self) -> bool:
        try:
            return self.smtp.noop()[0] == 250
        except (OSError, smtplib.SMTPException):
            return False

    def close(self) -> None:
        try:
            self.smtp.quit()
        except (OSError, smtplib.SMTPException):
            self.smtp.close()


class SmtpBackend:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def connect(self) -> Connection:
        return SmtpConnection(self.settings)

    def key(self) -> Hashable:
        s = self.settings
        return ("smtp", s.smtp_host, s.smtp_port, s.smtp_use_ssl, s.smtp_use_tls, s.smtp_user,
                s.smtp_password)  # fmt: skip


class ConsoleConnection:
    def send(self, sender: str, recipient: str, message: bytes,
             before_accept: Callable[[], None] = nothing_to_wait_for) -> None:  # fmt: skip
        before_accept()
        parsed = message_from_bytes(message, policy=policy.default)
        body = parsed.get_body(("plain",))
        text = body.get_content() if body else ""  # type: ignore[attr-defined]
        log.info("console email to %s: %s\n%s", recipient, parsed["Subject"], text)

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        pass


class ConsoleBackend:
    """Used when no SMTP_HOST is configured: the worker log shows what would have been sent."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def connect(self) -> Connection:
        return ConsoleConnection()

    def key(self) -> Hashable:
        return ("console",)


class SendGridConnection:
    """SendGrid's v3 Mail Send API over one kept-alive HTTPS connection.

    The outbox holds the finished MIME message; SendGrid wants its parts as JSON, so they are read
    back out of it. The Message-ID travels as a header, so retries keep the same one.
    """

    def __init__(self, settings: Settings) -> None:
        self.url = settings.sendgrid_api_url
        self.client = httpx.Client(
            timeout=settings.smtp_timeout, headers={"Authorization": f"Bearer {settings.sendgrid_api_key}"}
        )

    def send(self, sender: str, recipient: str, message: bytes,
             before_accept: Callable[[], None] = nothing_to_wait_for) -> None:  # fmt: skip
        parsed = message_from_bytes(message, policy=policy.default)
        content = [
            {"type": part.get_content_type(), "value": part.get_content()}  # type: ignore[attr-defined]
            for part in (parsed.get_body(("plain",)), parsed.get_body(("html",)))
            if part is not None
        ]
        to_name, from_name = parsed["To"].addresses[0].display_name, parsed["From"].addresses[0].display_name
        body = {
            "personalizations": [{"to": [{"email": recipient, **({"name": to_name} if to_name else {})}]}],
            "from": {"email": sender, **({"name": from_name} if from_name else {})},
            "subject": str(parsed["Subject"]),
            "content": content,
            "headers": {"Message-ID": str(parsed["Message-ID"])},
        }
        before_accept()
        try:
            response = self.client.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"SendGrid unreachable: {exc!r}", permanent=False, broken=True) from exc
        if response.status_code == 202:
            return
        reason = f"SendGrid answered {response.status_code}: {_sendgrid_errors(response)}"
        # 400 and 413 mean this message will never be accepted; anything else (a bad API key,
        # rate limiting, an outage) can pass once fixed or over.
        raise DeliveryError(reason, permanent=response.status_code in (400, 413), code=response.status_code)

    def alive(self) -> bool:
        return True  # httpx reconnects by itself when the server closed the kept-alive connection

    def close(self) -> None:
        self.client.close()


def _sendgrid_errors(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors", [])
        return (
            "; ".join(f"{e.get('field') or 'request'}: {e.get('message')}" for e in errors) or response.text
        )
    except ValueError:
        return response.text[:500]


class SendGridBackend:
    def __init__(self, settings: Settings) -> None:
        if not settings.sendgrid_api_key:
            raise ValueError("EMAIL_BACKEND=sendgrid needs SENDGRID_API_KEY")
        self.settings = settings

    def connect(self) -> Connection:
        return SendGridConnection(self.settings)

    def key(self) -> Hashable:
        return ("sendgrid", self.settings.sendgrid_api_url, self.settings.sendgrid_api_key)


def _ses_backend(settings: Settings) -> EmailBackend:
    """Imported only when chosen: boto3 takes a while to import, and most processes never use it."""
    from src.emails.ses import SesBackend

    return SesBackend(settings)


BACKENDS: dict[str, Callable[[Settings], EmailBackend]] = {
    "smtp": SmtpBackend,
    "console": ConsoleBackend,
    "sendgrid": SendGridBackend,
    "ses": _ses_backend,
}


def get_backend(settings: Settings) -> EmailBackend:
    name = settings.email_backend_name
    try:
        return BACKENDS[name](settings)
    except KeyError:
        raise ValueError(f"unknown EMAIL_BACKEND {name!r}; choose one of {sorted(BACKENDS)}") from None
