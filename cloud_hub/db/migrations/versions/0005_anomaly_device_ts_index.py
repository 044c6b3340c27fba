"""anomaly_events: index (device_id, ts) for the dashboard; the device_id index it makes redundant goes.

Revision ID: 0005
Revises: '0004'
Create Date: 2026-11-23 14:35:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('anomaly_events', schema=None) as batch_op:
        batch_op.create_index('ix_anomaly_events_device_id_ts', ['device_id', 'ts'], unique=False)
        batch_op.drop_index(batch_op.f('ix_anomaly_events_device_id'))


def downgrade() -> None:
    with op.batch_alter_table('anomaly_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_anomaly_events_device_id'), ['device_id'], unique=False)
        batch_op.drop_index('ix_anomaly_events_device_id_ts')
