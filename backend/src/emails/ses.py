"""Amazon SES: the SESv2 `SendEmail` API, given the raw MIME message the outbox holds, so every header
Herald wrote (Message-ID, List-Unsubscribe, ...) reaches the recipient as it is.

Region and credentials come from AWS's usual places (AWS_REGION or AWS_DEFAULT_REGION, the AWS_*
keys, a profile, an instance or task role); AWS_REGION and the keys may also be in backend/.env.
One boto3 client per connection: it is thread-safe and keeps its HTTPS connections alive.
"""

import functools
import threading
from collections.abc import Callable, Hashable
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from src.config import Settings
from src.emails.backends import Connection, DeliveryError, nothing_to_wait_for

# SES refuses this message for good: sending it again cannot succeed.
PERMANENT_ERRORS = frozenset(
    {"MessageRejected", "MailFromDomainNotVerifiedException", "BadRequestException", "InvalidParameterValue"}
)
# Everything else (throttling such as TooManyRequestsException, Throttling or LimitExceededException,
# 5xx, a paused account, wrong credentials) can pass once it is over or fixed: retried with backoff.


_sessions_lock = threading.Lock()


@functools.lru_cache(maxsize=4)
def _session(access_key_id: str, secret_access_key: str, session_token: str, region: str) -> boto3.Session:
    """One per process and set of settings: a session loads SES's API description once (a quarter
    of a second), and each connection's client is then made from it in milliseconds. Empty values
    leave it to AWS's usual chain."""
    return boto3.session.Session(
        aws_access_key_id=access_key_id or None,
        aws_secret_access_key=secret_access_key or None,
        aws_session_token=session_token or None,
        region_name=region or None,
    )


class SesConnection:
    def __init__(self, settings: Settings) -> None:
        self.configuration_set = settings.ses_configuration_set
        with _sessions_lock:  # a boto3 session is not thread-safe; the clients it makes are
            self.client = _session(
                settings.aws_access_key_id,
                settings.aws_secret_access_key,
                settings.aws_session_token,
                settings.aws_region,
            ).client(
                "sesv2",
                endpoint_url=settings.ses_endpoint_url or None,
                config=Config(
                    connect_timeout=settings.smtp_timeout,
                    read_timeout=settings.smtp_timeout,
                    # One quick retry for a blip; longer waits are the outbox's backoff, not a held worker.
                    retries={"mode": "standard", "total_max_attempts": 2},
                ),
            )

    def send(self, sender: str, recipient: str, message: bytes,
             before_accept: Callable[[], None] = nothing_to_wait_for) -> None:  # fmt: skip
        request: dict[str, Any] = {
            "FromEmailAddress": sender,
            "Destination": {"ToAddresses": [recipient]},
            "Content": {"Raw": {"Data": message}},
        }
        if self.configuration_set:
            request["ConfigurationSetName"] = self.configuration_set
        before_accept()
        try:
            self.client.send_email(**request)
        except ClientError as exc:
            raise refusal(exc, sender, recipient) from exc
        except BotoCoreError as exc:  # no connection, a timeout, no credentials found
            raise DeliveryError(f"Amazon SES unreachable: {exc}", permanent=False, broken=True) from exc

    def alive(self) -> bool:
        return True  # botocore reconnects by itself when SES closed a kept-alive connection

    def close(self) -> None:
        self.client.close()


def refusal(exc: ClientError, sender: str, recipient: str) -> DeliveryError:
    """SES's answer as a `DeliveryError`, its reason in SES's words and, where SES's are obscure, ours."""
    error = exc.response.get("Error", {})
    code = error.get("Code", "Unknown")
    message = error.get("Message", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    reason = f"Amazon SES refused ({code}): {message}"
    if code == "MessageRejected" and "not verified" in message.lower():
        failed = message.lower()
        if recipient.lower() in failed:
            reason = (
                f"Amazon SES refused {recipient}: the account is in the SES sandbox, which mails only "
                f"verified addresses; request production access for it (or verify the address). SES said: "
                f"{message}"
            )
        elif sender.lower() in failed or sender.rpartition("@")[2].lower() in failed:
            reason = f"Amazon SES refused the sender {sender}: verify it (or its domain). SES said: {message}"
    return DeliveryError(reason, permanent=code in PERMANENT_ERRORS, code=status)


class SesBackend:
    def __init__(self, settings: Settings) -> None:
        if not (settings.aws_region or boto3.session.Session().region_name):
            raise ValueError("EMAIL_BACKEND=ses needs a region: set AWS_REGION (or AWS_DEFAULT_REGION)")
        self.settings = settings

    def connect(self) -> Connection:
        return SesConnection(self.settings)

    def key(self) -> Hashable:
        s = self.settings
        return ("ses", s.aws_region, s.ses_endpoint_url, s.ses_configuration_set, s.aws_access_key_id,
                s.aws_secret_access_key, s.aws_session_token)  # fmt: skip
