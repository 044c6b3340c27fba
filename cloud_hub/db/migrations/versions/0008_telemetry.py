"""telemetry: agents' score statistics per interval (the dashboard's score line).

Revision ID: 0008
Revises: '0007'
Create Date: 2026-11-23 14:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('telemetry',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('msg_id', sa.String(length=80), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.Column('interval_s', sa.Float(), nullable=False),
    sa.Column('scored', sa.Integer(), nullable=False),
    sa.Column('score_mean', sa.Float(), nullable=False),
    sa.Column('score_max', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_telemetry')),
    sa.UniqueConstraint('device_id', 'msg_id', name=op.f('uq_telemetry_device_id'))
    )
    with op.batch_alter_table('telemetry', schema=None) as batch_op:
        batch_op.create_index('ix_telemetry_device_id_ts', ['device_id', 'ts'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('telemetry', schema=None) as batch_op:
        batch_op.drop_index('ix_telemetry_device_id_ts')
    op.drop_table('telemetry')
