"""email suppressions

Revision ID: 0007
Revises: 0005

`email_queue.status` is a VARCHAR(20) without a CHECK constraint (a non-native Enum), so the new
status `suppressed` needs no change to it; a downgrade turns those rows into `failed`, a status the
older code knows.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "email_suppressions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("reason", sa.String(length=20), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.execute(
        "UPDATE email_queue SET status = 'failed', "
        "last_error = COALESCE(last_error, 'not sent: the address was suppressed') "
        "WHERE status = 'suppressed'"
    )
    op.drop_table("email_suppressions")
