import uuid

import psycopg
import pytest
from sqlalchemy import create_engine, inspect

from tests.conftest import PG_ADMIN, RUN_DIR, libpq_url, migrate, require_service


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request):
    if request.param == "sqlite":
        yield f"sqlite:///{RUN_DIR / f'migrations-{uuid.uuid4().hex}.db'}"
        return
    require_service("postgresql")
    name = f"herald_mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq_url(PG_ADMIN), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    with psycopg.connect(libpq_url(PG_ADMIN), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


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
