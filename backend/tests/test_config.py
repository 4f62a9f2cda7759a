import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from src.config import BACKEND_DIR, DEFAULT_SECRET_KEY, Settings, shipped_secret_keys

REPOSITORY = BACKEND_DIR.parent
EXAMPLE = BACKEND_DIR / ".env.example"
EXAMPLE_KEY = next(iter(shipped_secret_keys()))
GOOD_KEY = "q" * 20 + "Zr8-1kLmN0pQ4sT7uVwX"


def published_secret_keys() -> set[str]:
    """Every SECRET_KEY value written anywhere in the repository's docs, examples and deploy files."""
    found = set()
    for path in [*REPOSITORY.glob("*.md"), BACKEND_DIR / ".env.example", *REPOSITORY.glob("deploy/**/*")]:
        if path.is_file():
            found |= {v.strip("\"'`") for v in re.findall(r"SECRET_KEY=([^\s]+)", path.read_text())}
    return found - {"", "$(python"}


@pytest.mark.parametrize("environment", ["production", "Production", "PRODUCTION", " production "])
@pytest.mark.parametrize(
    "secret", [DEFAULT_SECRET_KEY, EXAMPLE_KEY, "change-me-to-a-long-random-value", "s" * 31]
)
def test_production_refuses_a_weak_or_published_secret_key(environment, secret):
    with pytest.raises(ValidationError, match="SECRET_KEY must be a random value"):
        Settings(environment=environment, secret_key=secret, _env_file=None)


def test_every_secret_key_the_repository_shows_is_refused_in_production():
    keys = published_secret_keys()
    assert EXAMPLE_KEY in keys
    for secret in keys:
        with pytest.raises(ValidationError):
            Settings(environment="production", secret_key=secret, _env_file=None)


def test_production_accepts_a_real_secret_key_and_development_needs_none():
    production = Settings(environment="production", secret_key=GOOD_KEY, smtp_host="mail", _env_file=None)
    assert production.secret_key == GOOD_KEY
    assert Settings(environment="development", _env_file=None).secret_key == DEFAULT_SECRET_KEY


@pytest.mark.parametrize("email", [{}, {"email_backend": "console", "smtp_host": "mail"}])
def test_production_refuses_the_console_email_backend(email):
    """It writes every message to the log: password reset codes, confirmation links."""
    with pytest.raises(ValidationError, match="needs a real email backend"):
        Settings(environment="production", secret_key=GOOD_KEY, **email, _env_file=None)
    for backend in ({"smtp_host": "mail"}, {"email_backend": "ses"}):
        production = Settings(environment="production", secret_key=GOOD_KEY, **backend, _env_file=None)
        assert production.email_backend_name != "console"


def test_a_production_start_with_the_example_env_file_refuses_to_run(tmp_path: Path):
    """As an operator would: `.env.example` copied, ENVIRONMENT=Production set, the API started."""
    env = {"PATH": "/usr/bin:/bin", "ENVIRONMENT": "Production", "SECRET_KEY": EXAMPLE_KEY}
    started = subprocess.run(
        [sys.executable, "-c", "import src.main"],
        cwd=BACKEND_DIR, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert started.returncode != 0
    assert "SECRET_KEY must be a random value of at least 32 characters" in started.stderr


def test_verification_is_required_in_production_and_optional_in_development():
    production = Settings(environment="Production", secret_key=GOOD_KEY, smtp_host="mail", _env_file=None)
    assert production.verification_required
    assert not Settings(environment="development", _env_file=None).verification_required
    assert Settings(
        environment="development", email_verification="required", _env_file=None
    ).verification_required
    relaxed = Settings(
        environment="production",
        secret_key=GOOD_KEY,
        smtp_host="mail",
        email_verification="optional",
        _env_file=None,
    )
    assert not relaxed.verification_required


def test_the_example_env_file_sets_every_setting():
    keys = set(re.findall(r"(?m)^([A-Z_]+)=", EXAMPLE.read_text()))
    assert {name.upper() for name in Settings.model_fields} <= keys


def test_the_example_env_file_copied_as_is_keeps_make_run_on_its_sink(tmp_path: Path):
    """Copied as its first line says: no SMTP server named (so `make run` mails its local sink),
    development, links to the API's port; PORT in the file moves the links with it, and an explicit
    PUBLIC_BASE_URL wins. (tests/test_readme.py copies it and starts `make run` for real.)"""
    copied = Settings(_env_file=EXAMPLE)
    assert (copied.smtp_host, copied.is_production, copied.public_url) == ("", False, "http://localhost:8000")
    moved = tmp_path / ".env"
    moved.write_text(EXAMPLE.read_text() + "PORT=8123\nSINK_PORT=1123\n")
    settings = Settings(_env_file=moved)
    assert (settings.port, settings.sink_port, settings.public_url) == (8123, 1123, "http://localhost:8123")
    public = Settings(_env_file=moved, public_base_url="https://herald.example.com/")
    assert public.public_url == "https://herald.example.com"


def test_redis_only_transport_options_apply_to_a_redis_broker_only():
    """RabbitMQ acknowledges for real: no visibility timeout (Redis's emulation), no redis-py sockets."""
    from src.celery_app import broker_transport_options
    from src.config import settings

    assert broker_transport_options("amqp://herald:secret@127.0.0.1:5672/herald") == {}
    assert broker_transport_options("redis://127.0.0.1:6379/0")["visibility_timeout"] == (
        settings.email_lease_seconds * 4
    )


@pytest.mark.parametrize(
    "sender",
    [
        "Herald <noreply@example.com>",
        "noreply@example.com\r\nBcc: x@example.com",
        "no reply@x.org",
        "zoë@x.org",
    ],
)
def test_a_sender_address_that_is_not_one_plain_address_stops_the_start(sender):
    with pytest.raises(ValidationError, match="one plain ASCII address"):
        Settings(_env_file=None, smtp_from_email=sender)
    assert (
        Settings(_env_file=None, smtp_from_email="noreply@example.com").smtp_from_email
        == "noreply@example.com"
    )
