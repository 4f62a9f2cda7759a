"""The one settings object: `backend/.env` first, the process environment over it."""

from functools import lru_cache
from pathlib import Path

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BACKEND_DIR = Path(__file__).resolve().parent.parent
DEFAULT_SECRET_KEY = "dev-only-insecure-secret-key-change-me-in-production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=BACKEND_DIR / ".env", env_file_encoding="utf-8", extra="ignore"
    )

    environment: str = "development"
    database_url: str = "sqlite:///./herald.db"
    redis_url: str = "redis://localhost:6379/0"
    redis_sentinel_master: str = ""  # set to use Sentinel: REDIS_URL then lists the sentinels
    secret_key: str = DEFAULT_SECRET_KEY
    access_token_expire_minutes: int = 60
    public_base_url: str = "http://localhost:8000"
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

    email_backend: str = ""  # "smtp", "sendgrid" or "console"; empty: smtp when SMTP_HOST is set
    sendgrid_api_key: str = ""
    sendgrid_api_url: str = "https://api.sendgrid.com/v3/mail/send"
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_from_email: str = "noreply@herald.local"
    smtp_from_name: str = "Herald"
    smtp_use_tls: bool = False
    smtp_use_ssl: bool = False
    smtp_timeout: float = 10.0

    notification_publish_interval: float = 5.0
    live_ping_seconds: float = 15.0
    live_send_timeout: float = 5.0
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

    @property
    def is_production(self) -> bool:
        return self.environment.strip().lower() == "production"

    @model_validator(mode="after")
    def _refuse_insecure_production(self) -> "Settings":
        if self.environment == "production" and (
            self.secret_key == DEFAULT_SECRET_KEY or len(self.secret_key) < 32
        ):
            raise ValueError(
                "SECRET_KEY must be set to a random value of at least 32 characters "
                "when ENVIRONMENT=production; generate one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()


settings = get_settings()
