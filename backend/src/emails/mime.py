"""The MIME message of an email, composed once when it is queued."""

import uuid
from datetime import datetime
from email import quoprimime
from email.charset import QP, Charset
from email.header import Header
from email.policy import Compat32
from email.utils import format_datetime, formataddr

from src.config import settings


class _SmtpPolicy(Compat32):
    """compat32 with CRLF line ends (SMTP wants them; smtplib does not fix bytes) and, as
    `Message.as_string()` uses it, no folding but what RFC 2047 encoding already did. A printable
    ASCII header is written as is: compat32 would build an `email.header.Header` for each one, a
    third of the time it took to compose a message, for the same bytes."""

    def fold(self, name: str, value: str) -> str:
        if isinstance(value, str) and value.isascii() and value.isprintable():
            return f"{name}: {value}{self.linesep}"
        return super().fold(name, value)


_SMTP_COMPAT32 = _SmtpPolicy(linesep="\r\n", max_line_length=0)
_UTF8_QP = Charset("utf-8")
_UTF8_QP.header_encoding = QP
_QP_TEXT = "MIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n"
_PLAIN_PART = f'Content-Type: text/plain; charset="utf-8"\r\n{_QP_TEXT}'
_HTML_PART = f'Content-Type: text/html; charset="utf-8"\r\n{_QP_TEXT}'


def _header(value: str) -> str:
    return value if value.isascii() else Header(value, _UTF8_QP).encode()


def _quoted_printable(text: str) -> str:
    """The body as `MIMEText(text, subtype, utf-8 with QP)` carries it, with CRLF line ends."""
    return quoprimime.body_encode(text.encode("utf-8").decode("latin-1")).replace("\n", "\r\n")


def compose_message(
    to_email: str,
    to_name: str,
    subject: str,
    body_text: str,
    body_html: str | None,
    message_id: str,
    date: datetime,
    headers: dict[str, str] | None = None,
) -> str:
    """The MIME message exactly as it will be sent: 7-bit clean, RFC 2047 headers where needed.

    Composed once, when queued, so every retry sends the same bytes and the send path does no
    rendering. The stdlib encodes every piece (headers, addresses, quoted-printable bodies); the
    layout around them is this one fixed shape, written out: the same bytes as the `email.mime`
    classes and their generator give, in an eighth of the time (a sixth of a queueing caller's CPU).
    """
    fold = _SMTP_COMPAT32.fold
    head = "".join(
        [
            fold("From", formataddr((settings.smtp_from_name, settings.smtp_from_email), charset="utf-8")),
            fold("To", formataddr((to_name, to_email), charset="utf-8")),
            fold("Subject", _header(subject)),
            fold("Message-ID", message_id),
            fold("Date", format_datetime(date)),
            *(fold(name, value) for name, value in (headers or {}).items()),  # ASCII, CR/LF checked
        ]
    )
    plain = _quoted_printable(body_text)
    if not body_html:
        return f"{_PLAIN_PART}{head}\r\n{plain}"
    # "=_" never occurs in quoted-printable text, so this boundary cannot clash with the parts.
    boundary = f"=_{uuid.uuid4().hex}"
    return (
        f'Content-Type: multipart/alternative; boundary="{boundary}"\r\nMIME-Version: 1.0\r\n{head}\r\n'
        f"--{boundary}\r\n{_PLAIN_PART}\r\n{plain}\r\n"
        f"--{boundary}\r\n{_HTML_PART}\r\n{_quoted_printable(body_html)}\r\n"
        f"--{boundary}--\r\n"
    )
