"""Drop the device_id indexes the unique (device_id, durable id) constraints already provide: one B-tree
less to update per stored event, sync batch and status (ingest rate).

Revision ID: 0004
Revises: '0003'
Create Date: 2026-11-23 14:33:38.824255
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401 - most revisions use it
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('anomaly_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_anomaly_events_device_id'))

    with op.batch_alter_table('status_changes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_status_changes_device_id'))

    with op.batch_alter_table('sync_batches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sync_batches_device_id'))


def downgrade() -> None:
    with op.batch_alter_table('sync_batches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sync_batches_device_id'), ['device_id'], unique=False)

    with op.batch_alter_table('status_changes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_status_changes_device_id'), ['device_id'], unique=False)

    with op.batch_alter_table('anomaly_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_anomaly_events_device_id'), ['device_id'], unique=False)

