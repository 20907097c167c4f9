"""expert banks (SAML), who they learned from, and users who let them learn from their voice

`expert_banks` holds each bank's build job (the enrolment jobs' columns and states) and the
bank it made; `expert_bank_contributors` which users' recordings a bank learned from (kept
after a user is deleted, so the bank still says so); `users.contribute_recordings` whether a
user lets banks learn from their stored recordings.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "contribute_recordings", sa.Boolean(), server_default=sa.false(), nullable=False
            )
        )
    _create_expert_banks()
    _create_contributors()


def _create_expert_banks() -> None:
    op.create_table(
        "expert_banks",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("base_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("experts", sa.Integer(), nullable=False),
        sa.Column("router", sa.String(length=16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("blob_key", sa.String(length=255), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("size_bytes", sa.Integer(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("includes_withdrawn", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("eta_seconds", sa.Float(), nullable=True),
        sa.Column("message", sa.String(length=500), nullable=True),
        sa.Column("error", sa.String(length=2000), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=64), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_expert_banks")),
        sa.UniqueConstraint(
            "base_fingerprint", "version", name=op.f("uq_expert_banks_base_fingerprint")
        ),
    )
    with op.batch_alter_table("expert_banks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_expert_banks_status"), ["status"], unique=False)
        batch_op.create_index(
            "uq_expert_banks_one_active_per_fingerprint",
            ["base_fingerprint"],
            unique=True,
            sqlite_where=sa.text("active"),
            postgresql_where=sa.text("active"),
        )


def _create_contributors() -> None:
    op.create_table(
        "expert_bank_contributors",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("bank_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=True),
        sa.Column("recordings", sa.Integer(), nullable=False),
        sa.Column("withdrawn", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["bank_id"],
            ["expert_banks.id"],
            name=op.f("fk_expert_bank_contributors_bank_id_expert_banks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_expert_bank_contributors_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_expert_bank_contributors")),
    )
    with op.batch_alter_table("expert_bank_contributors", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_expert_bank_contributors_bank_id"), ["bank_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_expert_bank_contributors_user_id"), ["user_id"], unique=False
        )


def downgrade() -> None:
    """The banks' rows go; their files stay in the adapter store under `expert-banks/`."""
    op.drop_table("expert_bank_contributors")
    op.drop_table("expert_banks")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("contribute_recordings")
