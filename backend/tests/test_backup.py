"""A `pg_dump` restored into a fresh PostgreSQL database delivers the emails that were pending, once."""

import subprocess

import pytest
from sqlalchemy import make_url, select, update

from src import db as herald_db
from src.db import SessionLocal, configure_engine
from src.devserver.databases import create_pg_database, drop_pg_database, migrate
from src.devserver.postgres_server import postgres_bin_dir
from src.emails.delivery import process_queue
from src.emails.models import EmailQueue, EmailStatus
from src.emails.service import EmailService
from tests.conftest import PG_ADMIN_URL, RUN_DIR, require_service


def libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def databases():
    """Two fresh databases (the original and the restore target); Herald's engine put back after."""
    require_service("postgresql")
    assert herald_db.engine is not None
    previous = herald_db.engine.url.render_as_string(hide_password=False)
    original, restored = (
        create_pg_database(PG_ADMIN_URL, name) for name in ("herald_backup", "herald_restore")
    )
    yield original, restored
    configure_engine(previous)
    for url in (original, restored):
        drop_pg_database(url)


def test_a_restored_dump_delivers_pending_emails_once_and_sent_ones_never_again(databases, delivery_to_sink):
    original, restored = databases
    migrate(original)
    configure_engine(original)
    with SessionLocal() as session:
        emails = [
            EmailService.queue_email(
                session,
                to_email=f"r{n}@example.com",
                subject=f"Restore {n}",
                body_text="hi",
                wake_worker=False,
            )
            for n in range(4)
        ]
        session.flush()
        session.execute(
            update(EmailQueue).where(EmailQueue.id == emails[0].id).values(status=EmailStatus.sent)
        )
        session.commit()
    pending = {e.message_id for e in emails[1:]}

    dump = RUN_DIR / "herald.dump"
    bin_dir = postgres_bin_dir()
    subprocess.run([bin_dir / "pg_dump", "--format=custom", f"--file={dump}", libpq(original)], check=True)
    subprocess.run([bin_dir / "pg_restore", "--no-owner", f"--dbname={libpq(restored)}", dump], check=True)

    configure_engine(restored)
    assert process_queue(time_budget=10) == 3
    received = [m.message["Message-ID"] for m in delivery_to_sink.messages]
    assert sorted(received) == sorted(pending)
    with SessionLocal() as session:
        statuses = set(session.scalars(select(EmailQueue.status)))
    assert statuses == {EmailStatus.sent}
