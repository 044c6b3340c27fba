"""Staged rollouts: waves, gates and operator commands per rollout, per-device states with timeouts, and
the announcement each device was last given (device_targets).

Existing rollouts were whole-fleet announcements: they become completed one-wave rollouts to every device
(active → completed); their devices' pending/requested become sent.

Revision ID: 0007
Revises: '0006'
Create Date: 2026-11-23 14:22:40.226144
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLLOUT_STATE = sa.Enum('RUNNING', 'PAUSED', 'COMPLETED', 'ABORTED', 'ROLLED_BACK', 'SUPERSEDED', name='rolloutstate',
                        native_enum=False, length=16)
DEVICE_STATE = sa.Enum('QUEUED', 'SENT', 'VERIFIED', 'ACTIVATED', 'HEALTHY', 'FAILED', 'ROLLED_BACK', 'TIMED_OUT',
                       name='devicerolloutstate', native_enum=False, length=16)

# Columns added to existing rows: (name, type, default for the rows already there).
ROLLOUT_COLUMNS: list[tuple[str, Any, str]] = [
    ('selector', sa.JSON(), '{}'),
    ('phases', sa.JSON(), '[100]'),
    ('wait_s', sa.Float(), '600'),
    ('max_failure', sa.Float(), '0.1'),
    ('on_gate_failure', sa.String(length=16), 'abort'),
    ('wave', sa.Integer(), '0'),
    ('reason', sa.String(length=500), ''),
    ('updated_at', sa.Float(), '0'),
]


def upgrade() -> None:
    op.create_table('device_targets',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=True),
    sa.Column('bundle_id', sa.Integer(), nullable=True),
    sa.Column('rollout_id', sa.Integer(), nullable=True),
    sa.Column('announced_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('device_id', name=op.f('pk_device_targets'))
    )
    with op.batch_alter_table('rollout_devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('wave', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('previous_version', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('sent_at', sa.Float(), nullable=True))
        batch_op.alter_column('state', existing_type=sa.VARCHAR(length=9), type_=DEVICE_STATE, existing_nullable=False)
        batch_op.create_index(batch_op.f('ix_rollout_devices_device_id'), ['device_id'], unique=False)
    with op.batch_alter_table('rollout_devices', schema=None) as batch_op:
        batch_op.alter_column('wave', server_default=None)
    op.execute("UPDATE rollout_devices SET state = 'SENT' WHERE state IN ('PENDING', 'REQUESTED')")

    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        for name, type_, default in ROLLOUT_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=False, server_default=default))
        batch_op.add_column(sa.Column('max_anomaly_increase', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('wave_started_at', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('command', sa.Enum('PAUSE', 'RESUME', 'ABORT', 'ROLLBACK', name='rolloutcommand',
                                                         native_enum=False, length=16), nullable=True))
        batch_op.add_column(sa.Column('finished_at', sa.Float(), nullable=True))
        batch_op.alter_column('state', existing_type=sa.VARCHAR(length=10), type_=ROLLOUT_STATE, existing_nullable=False)
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        for name, _, _ in ROLLOUT_COLUMNS:
            batch_op.alter_column(name, server_default=None)
    op.execute("UPDATE rollouts SET state = 'COMPLETED' WHERE state = 'ACTIVE'")


def downgrade() -> None:
    op.execute("UPDATE rollouts SET state = CASE WHEN state IN ('RUNNING', 'PAUSED', 'COMPLETED') THEN 'ACTIVE' "
               "ELSE 'SUPERSEDED' END")
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.alter_column('state', existing_type=ROLLOUT_STATE, type_=sa.VARCHAR(length=10), existing_nullable=False)
        for name in ('finished_at', 'command', 'wave_started_at', 'max_anomaly_increase'):
            batch_op.drop_column(name)
        for name, _, _ in reversed(ROLLOUT_COLUMNS):
            batch_op.drop_column(name)

    op.execute("UPDATE rollout_devices SET state = CASE WHEN state IN ('QUEUED', 'SENT', 'VERIFIED') THEN 'PENDING' "
               "WHEN state IN ('ACTIVATED', 'HEALTHY') THEN 'ACTIVATED' ELSE 'FAILED' END")
    with op.batch_alter_table('rollout_devices', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollout_devices_device_id'))
        batch_op.alter_column('state', existing_type=DEVICE_STATE, type_=sa.VARCHAR(length=9), existing_nullable=False)
        batch_op.drop_column('sent_at')
        batch_op.drop_column('previous_version')
        batch_op.drop_column('wave')

    op.drop_table('device_targets')
