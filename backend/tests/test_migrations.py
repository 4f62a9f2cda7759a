import uuid

import pytest
from sqlalchemy import create_engine, inspect

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
