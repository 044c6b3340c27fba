"""telemetry: flagged windows and the scoring model per interval (the rollout's anomaly-rate gate).

Revision ID: 0009
Revises: '0008'
Create Date: 2026-11-23 17:20:54.162562
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401 - most revisions use it
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('telemetry', schema=None) as batch_op:
        batch_op.add_column(sa.Column('flagged', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('model_version', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('telemetry', schema=None) as batch_op:
        batch_op.drop_column('model_version')
        batch_op.drop_column('flagged')

