"""recordings as a resource (origin, jobs link their recordings) and invite links

A recording no longer belongs to exactly one enrolment: corrections arrive on their own, and a
retraining job trains on recordings stored before it. `enrolment_recordings` says which
recordings each job trains on, in order; `recordings.enrolment_id` now only says which upload
brought one (NULL for recordings added on their own).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "enrolment_recordings",
        sa.Column("enrolment_id", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("recording_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["enrolment_id"],
            ["enrolment_jobs.id"],
            name=op.f("fk_enrolment_recordings_enrolment_id_enrolment_jobs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["recording_id"],
            ["recordings.id"],
            name=op.f("fk_enrolment_recordings_recording_id_recordings"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("enrolment_id", "position", name=op.f("pk_enrolment_recordings")),
    )
    with op.batch_alter_table("enrolment_recordings", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_enrolment_recordings_recording_id"), ["recording_id"], unique=False
        )
    op.execute(
        "INSERT INTO enrolment_recordings (enrolment_id, position, recording_id) "
        "SELECT enrolment_id, position, id FROM recordings"
    )
    with op.batch_alter_table("recordings", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("origin", sa.String(length=16), server_default="enrolment", nullable=False)
        )
        batch_op.alter_column("enrolment_id", existing_type=sa.String(length=32), nullable=True)
        batch_op.drop_constraint(batch_op.f("uq_recordings_enrolment_id"), type_="unique")
        batch_op.drop_column("position")

    op.create_table(
        "invite_links",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_invite_links_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invite_links")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_invite_links_token_hash")),
    )
    with op.batch_alter_table("invite_links", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_invite_links_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    """Recordings that came on their own (no enrolment upload) have no place in the old schema
    and are dropped; their blobs stay in the store under the user's prefix."""
    with op.batch_alter_table("invite_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invite_links_user_id"))
    op.drop_table("invite_links")

    op.execute("DELETE FROM recordings WHERE enrolment_id IS NULL")
    with op.batch_alter_table("recordings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("position", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE recordings SET position = (SELECT MIN(er.position) FROM enrolment_recordings er "
        "WHERE er.recording_id = recordings.id AND er.enrolment_id = recordings.enrolment_id)"
    )
    op.execute("DELETE FROM recordings WHERE position IS NULL")
    with op.batch_alter_table("recordings", schema=None) as batch_op:
        batch_op.alter_column("position", existing_type=sa.Integer(), nullable=False)
        batch_op.create_unique_constraint(
            batch_op.f("uq_recordings_enrolment_id"), ["enrolment_id", "position"]
        )
        batch_op.alter_column("enrolment_id", existing_type=sa.String(length=32), nullable=False)
        batch_op.drop_column("origin")

    with op.batch_alter_table("enrolment_recordings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_enrolment_recordings_recording_id"))
    op.drop_table("enrolment_recordings")
