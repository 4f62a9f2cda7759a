import uuid

import pytest
from sqlalchemy import create_engine, inspect, text

from src.devserver.databases import create_pg_database, drop_pg_database, migrate
from tests.conftest import PG_ADMIN_URL, RUN_DIR, require_service


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request):
    if request.param == "sqlite":
        yield f"sqlite:///{RUN_DIR / f'migrations-{uuid.uuid4().hex}.db'}"
        return
    require_service("postgresql")
    url = create_pg_database(PG_ADMIN_URL, prefix="herald_mig")
    yield url
    drop_pg_database(url)


def tables(url):
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_database):
    from src.models import Base

    migrate(empty_database)
    assert tables(empty_database) == set(Base.metadata.tables)
    migrate(empty_database, "base", "downgrade")
    assert tables(empty_database) == set()
    migrate(empty_database)
    assert tables(empty_database) == set(Base.metadata.tables)


def test_suppressed_emails_become_failed_when_suppression_is_downgraded(empty_database):
    """`suppressed` needs no schema change to `email_queue.status` (no CHECK, no enum type), and the
    code before it, which does not know that status, finds such rows failed."""
    migrate(empty_database)
    engine = create_engine(empty_database)
    row = (
        "INSERT INTO email_queue (to_email, to_name, subject, mime, message_id, status, priority, attempts, "
        "max_attempts, next_attempt_at, created_at, updated_at) VALUES ('a@example.com', '', 's', 'm', "
        "'<1@x>', 'suppressed', 0, 1, 5, '2025-01-01', '2025-01-01', '2025-01-01')"
    )
    try:
        with engine.begin() as conn:
            conn.execute(text(row))
        migrate(empty_database, "0007", "downgrade")  # undo what came after, then suppression itself
        migrate(empty_database, "-1", "downgrade")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT status, last_error FROM email_queue")).one() == (
                "failed", "not sent: the address was suppressed",
            )  # fmt: skip
        assert "email_suppressions" not in tables(empty_database)
    finally:
        engine.dispose()
