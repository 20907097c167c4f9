"""enrolment jobs remember the Idempotency-Key (and the request) that created them

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-11 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("enrolment_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(255), nullable=True))
        batch_op.add_column(sa.Column("request_digest", sa.String(64), nullable=True))
        batch_op.create_unique_constraint(
            "uq_enrolment_jobs_user_idempotency_key", ["user_id", "idempotency_key"]
        )


def downgrade() -> None:
    with op.batch_alter_table("enrolment_jobs", schema=None) as batch_op:
        batch_op.drop_constraint("uq_enrolment_jobs_user_idempotency_key", type_="unique")
        batch_op.drop_column("request_digest")
        batch_op.drop_column("idempotency_key")
