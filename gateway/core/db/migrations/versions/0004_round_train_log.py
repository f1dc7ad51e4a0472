"""training_rounds.train_log: each round's per-step training log (loss, reward margins, ...)

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_rounds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("train_log", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("training_rounds", schema=None) as batch_op:
        batch_op.drop_column("train_log")
