"""Throw-away PostgreSQL databases and migrations, for the tests and benchmarks."""

import uuid
from pathlib import Path

import psycopg
from sqlalchemy.engine import URL, make_url

# Not src.config: the tests import this before settings may be read.
ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def create_pg_database(admin_url: str, prefix: str = "herald_test") -> str:
    """Create a fresh, uniquely named database; returns its SQLAlchemy URL. Raises psycopg.Error."""
    admin = make_url(admin_url)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_libpq(admin), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    target = make_url(url)
    admin = target.set(database="postgres")
    with psycopg.connect(_libpq(admin), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')


def migrate(url: str, revision: str = "head", direction: str = "upgrade") -> None:
    from alembic import command
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    config.set_main_option("sqlalchemy.url", url)
    config.attributes["configure_logger"] = False
    getattr(command, direction)(config, revision)
