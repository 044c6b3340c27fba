"""The agent's outbox figures from its heartbeat (depth, bytes, drops by kind) on heartbeats and devices.

Revision ID: 0004
Revises: '0003'
Create Date: 2026-11-23 14:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("heartbeats", "devices")


def upgrade() -> None:
    for table in TABLES:  # existing rows: nothing reported yet (0, 0, {})
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('outbox_depth', sa.Integer(), nullable=False, server_default='0'))
            batch_op.add_column(sa.Column('outbox_bytes', sa.BigInteger(), nullable=False, server_default='0'))
            batch_op.add_column(sa.Column('outbox_dropped', sa.JSON(), nullable=False, server_default='{}'))
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in ('outbox_depth', 'outbox_bytes', 'outbox_dropped'):
                batch_op.alter_column(column, server_default=None)


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in ('outbox_dropped', 'outbox_bytes', 'outbox_depth'):
                batch_op.drop_column(column)
