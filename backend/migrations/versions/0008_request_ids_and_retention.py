"""email rows remember the request that queued them; the live replay knows what retention deleted

Revision ID: 0008
Revises: 0007

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("email_queue") as batch:
        batch.add_column(sa.Column("request_id", sa.String(length=64), nullable=True))
    with op.batch_alter_table("notification_sequence") as batch:
        batch.add_column(sa.Column("purged_through", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("notification_sequence") as batch:
        batch.drop_column("purged_through")
    with op.batch_alter_table("email_queue") as batch:
        batch.drop_column("request_id")
