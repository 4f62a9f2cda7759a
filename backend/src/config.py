"""The one settings object: `backend/.env` first, the process environment over it."""

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import limits
from pydantic import AfterValidator, Field, PositiveInt, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from src.emails.sendgrid_signature import public_key

BACKEND_DIR = Path(__file__).resolve().parent.parent
DEFAULT_SECRET_KEY = "dev-only-insecure-secret-key-change-me-in-production"
# Keys anyone who has read the repository knows: the built-in default, what `.env.example` ships
# (read from it, so a new placeholder is covered too) and the placeholder it used to ship.
_PUBLISHED_SECRET_KEYS = {DEFAULT_SECRET_KEY, "change-me-to-a-long-random-value"}
SNS_HOSTS = r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?"  # where AWS serves SNS's signing certificates


def _one_rate_limit(value: str) -> str:
    """A malformed limit stops the process at start-up, not at the first request it would refuse."""
    if len(limits.parse_many(value)) != 1:  # parse_many raises ValueError on bad notation
        raise ValueError(f"one limit such as '10/15 minutes' is expected, not {value!r}")
    return value


RateLimit = Annotated[str, AfterValidator(_one_rate_limit)]  # `limits` notation: "10/15 minutes"


def _sendgrid_key(value: str) -> str:
    """A key that cannot verify anything stops the process at start-up, not every webhook call."""
    if value.strip():
        public_key(value)  # raises ValueError saying what is wrong
    return value.strip()


def _envelope_address(value: str) -> str:
    """The sender goes into MAIL FROM and every From header as it is: one ASCII address, nothing else."""
    if not re.fullmatch(r"[!-~]+@[!-~]+", value) or any(c in value for c in '<>,;"()'):
        raise ValueError(f"one plain ASCII address such as noreply@example.com is expected, not {value!r}")
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=BACKEND_DIR / ".env", env_file_encoding="utf-8", extra="ignore"
    )

    environment: str = "development"
    log_format: Literal["text", "json"] = "text"  # json: one object per line, with request ids
    database_url: str = "sqlite:///./herald.db"
    redis_url: str = "redis://localhost:6379/0"
    redis_sentinel_master: str = ""  # set to use Sentinel: REDIS_URL then lists the sentinels
    # Celery's broker, e.g. amqp://herald:secret@rabbit:5672/herald; empty: REDIS_URL. Redis keeps the
    # live fan-out, the rate limits and Celery's (unused) result backend either way.
    celery_broker_url: str = ""
    secret_key: str = DEFAULT_SECRET_KEY
    access_token_expire_minutes: int = 60
    public_base_url: str = ""  # base of emailed links; empty: the API this machine serves on PORT
    port: int = 8000  # the API's port under `make run`
    sink_port: int = 1025  # `make run`'s local SMTP sink, used while SMTP_HOST is empty
    # "required": an account must confirm its address before it can log in or be mailed about tasks.
    # "optional": both work at once. Empty: required in production, optional elsewhere.
    email_verification: Literal["", "required", "optional"] = ""
    verification_token_hours: int = 48
    password_reset_token_minutes: int = 60
    invitation_days: int = 7
    metrics_token: str = ""  # Prometheus scrapes /metrics with it; empty keeps /metrics closed
    docs_in_production: bool = False  # serve /docs, /redoc and /openapi.json even in production
    max_body_bytes: int = 1_048_576  # larger request bodies answer 413 before they are read

    # Chosen together (see src/admission.py): API_THREADS requests are admitted at once and each
    # holds at most one connection; streams' short lookups use at most API_THREADS more; the relay one.
    # 8 threads keep a core busy when the database answers in milliseconds; more only make them
    # fight over the GIL, and the event loop (streams, /healthz) waits behind all of them.
    api_threads: int = 8  # requests one API process serves at once (more wait their turn in memory)
    db_pool_size: int = 18  # connections per process; at least 2 x API_THREADS + 2
    db_pool_timeout: float = 1.5  # a request that cannot get a connection this soon answers 503
    db_connect_timeout: int = 2  # seconds (libpq's minimum is 2)
    # A database that stops answering without closing the connection (a network partition, a host
    # gone): a connection waiting on it is given up after about this long, not the kernel's 15 minutes.
    db_dead_peer_seconds: int = 10

    email_backend: str = ""  # "smtp", "sendgrid", "ses" or "console"; empty: smtp when SMTP_HOST is set
    sendgrid_api_key: str = ""
    sendgrid_api_url: str = "https://api.sendgrid.com/v3/mail/send"
    # SendGrid's Event Webhook (POST /api/webhooks/sendgrid) suppresses addresses that bounce, are
    # dropped or report spam. Its verification key, base64 as SendGrid shows it; empty: endpoint off.
    sendgrid_webhook_public_key: Annotated[str, AfterValidator(_sendgrid_key)] = ""
    sendgrid_webhook_max_age_seconds: PositiveInt = 600  # a signed timestamp older (or newer) is a replay
    # Amazon SES (EMAIL_BACKEND=ses). Region and credentials: AWS's usual settings; those left empty
    # here come from AWS_DEFAULT_REGION, ~/.aws, or the instance's or task's role.
    aws_region: str = ""
    aws_access_key_id: str = ""
    aws_secret_access_key: str = ""
    aws_session_token: str = ""
    ses_endpoint_url: str = ""  # empty: SES's own; set for a VPC endpoint (or a local SES in tests)
    ses_configuration_set: str = ""  # SES configuration set each email is sent with (event publishing)
    # SES bounce and complaint notifications through SNS (POST /api/webhooks/ses) suppress addresses.
    # The topic they come from, as an ARN; empty: endpoint off.
    ses_sns_topic_arn: str = ""
    # Hosts SNS's signing certificates (and subscription confirmations) may be fetched from, always
    # over HTTPS: a regular expression the whole host name must match.
    ses_sns_cert_host_pattern: Annotated[str, AfterValidator(_regex)] = SNS_HOSTS
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_from_email: Annotated[str, AfterValidator(_envelope_address)] = "noreply@herald.local"
    smtp_from_name: str = "Herald"
    smtp_use_tls: bool = False
    smtp_use_ssl: bool = False
    smtp_timeout: float = 10.0
    smtp_idle_seconds: float = 30.0  # a worker process keeps its connection this long unused; 0: never

    notification_publish_interval: float = 5.0
    live_ping_seconds: float = 15.0
    live_send_timeout: float = 5.0
    live_membership_check_seconds: float = 30.0  # streams whose organizations changed end this soon
    stream_token_seconds: int = 60
    streams_per_user: int = 10  # live streams (SSE and WebSocket, all processes); a new one ends the oldest

    email_queue_interval: float = 60.0
    email_batch_size: int = 100
    email_max_attempts: int = 5
    email_lease_seconds: int = 120
    email_backoff_base_seconds: float = 30.0
    email_backoff_max_seconds: float = 3600.0
    email_processor_concurrency: int = 2
    email_max_body_bytes: int = 1_000_000
    email_retention_days: Annotated[int, Field(ge=1)] = 30  # sent emails and their attempts
    email_failed_retention_days: Annotated[int, Field(ge=1)] = 90  # failed and cancelled ones
    notification_retention_days: Annotated[int, Field(ge=1)] = 90  # read notifications, and broadcasts
    email_digest_seconds: int = 3600  # an hourly digest's window; daily ones go out at a local hour
    email_digest_check_seconds: float = 60.0  # how often beat looks for digests whose window closed
    unsubscribe_mailto: str = ""  # an address for List-Unsubscribe's mailto: (its mail is read by you)
    unsubscribe_token_days: int = 365  # how long an emailed unsubscribe link works

    @property
    def is_production(self) -> bool:
        return self.environment.strip().lower() == "production"

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url

    @property
    def public_url(self) -> str:
        """Base of the links put in emails, without a trailing slash. Without PUBLIC_BASE_URL it is
        the port served here, so moving `make run` to another port moves the links with it."""
        return (self.public_base_url or f"http://localhost:{self.port}").rstrip("/")

    @property
    def email_backend_name(self) -> str:
        return self.email_backend or ("smtp" if self.smtp_host else "console")

    @property
    def verification_required(self) -> bool:
        return self.email_verification == "required" or (self.email_verification == "" and self.is_production)

    # Rate limits (src/ratelimit.py), counted in Redis over a moving window. "Account" is the
    # normalized email for sign-in flows and the user id for invitations and status changes. Sized
    # so that a team of 20 signing up, verifying, logging in and inviting each other from one office
    # address within an hour is never refused, and a script trying passwords is after 10 tries.
    rate_limit_login_per_ip: RateLimit = "100/hour"  # attempts; one address keeps <= 2 accounts locked
    rate_limit_login_per_account: RateLimit = "10/15 minutes"  # attempts, right or wrong
    rate_limit_register_per_ip: RateLimit = "50/hour"
    rate_limit_register_per_account: RateLimit = "5/hour"  # per email: each may send a verification mail
    rate_limit_verify_per_ip: RateLimit = "60/hour"  # verification confirmations and resends
    rate_limit_verify_per_account: RateLimit = "10/hour"
    rate_limit_reset_per_ip: RateLimit = "30/hour"  # password reset requests and confirmations
    rate_limit_reset_per_account: RateLimit = "5/hour"  # each request mails the address
    rate_limit_invite_per_ip: RateLimit = "400/hour"  # invitations sent: 20 people inviting 19 each
    rate_limit_invite_per_account: RateLimit = "50/hour"  # per inviting user
    rate_limit_invite_reply_per_ip: RateLimit = "60/hour"  # invitations accepted or declined
    rate_limit_invite_reply_per_account: RateLimit = "20/hour"
    rate_limit_status_change_per_account: RateLimit = "120/minute"  # per user; each change sends mail

    @model_validator(mode="after")
    def _refuse_insecure_production(self) -> "Settings":
        if self.is_production and (
            len(self.secret_key) < 32 or self.secret_key in _PUBLISHED_SECRET_KEYS | shipped_secret_keys()
        ):
            raise ValueError(
                "SECRET_KEY must be a random value of at least 32 characters, and not one published in "
                "Herald's repository, when ENVIRONMENT=production; generate one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        if self.is_production and self.email_backend_name == "console":
            raise ValueError(
                "ENVIRONMENT=production needs a real email backend: set SMTP_HOST (or EMAIL_BACKEND=sendgrid "
                "or ses); the console backend writes every message, password reset codes included, to the log"
            )
        return self


def shipped_secret_keys() -> set[str]:
    """The SECRET_KEY values written in the files the repository ships as examples."""
    example = BACKEND_DIR / ".env.example"
    text = example.read_text(encoding="utf-8") if example.exists() else ""
    return {value.strip().strip("\"'") for value in re.findall(r"(?m)^\s*SECRET_KEY\s*=(.*)$", text)}


@lru_cache
def get_settings() -> Settings:
    return Settings()


settings = get_settings()
