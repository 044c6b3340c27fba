"""Initial schema: the tables the release before Alembic created with create_all (the baseline a
pre-Alembic hub database is stamped with).

Revision ID: 0001
Revises: None
Create Date: 2026-11-23 14:04:42.798528
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('anomaly_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('detected_at', sa.Float(), nullable=False),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('threshold', sa.Float(), nullable=False),
    sa.Column('model_version', sa.Integer(), nullable=False),
    sa.Column('top_features', sa.JSON(), nullable=False),
    sa.Column('attribution', sa.JSON(), nullable=False),
    sa.Column('likelihood', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_anomaly_events')),
    sa.UniqueConstraint('device_id', 'event_id', name=op.f('uq_anomaly_events_device_id'))
    )
    with op.batch_alter_table('anomaly_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_anomaly_events_device_id'), ['device_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_anomaly_events_ts'), ['ts'], unique=False)

    op.create_table('devices',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('first_seen', sa.Float(), nullable=False),
    sa.Column('last_seen', sa.Float(), nullable=False),
    sa.Column('online', sa.Boolean(), nullable=False),
    sa.Column('model_version', sa.Integer(), nullable=True),
    sa.Column('model_state', sa.String(length=16), nullable=False),
    sa.Column('agent_version', sa.String(length=32), nullable=False),
    sa.Column('runtime', sa.String(length=32), nullable=False),
    sa.Column('last_error', sa.String(length=500), nullable=False),
    sa.Column('readings_scored', sa.Integer(), nullable=False),
    sa.Column('profile', sa.String(length=64), nullable=False),
    sa.Column('device_group', sa.String(length=64), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('password_hash', sa.String(length=200), nullable=False),
    sa.Column('provisioned_at', sa.Float(), nullable=True),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.Column('mqtt_client_id', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('device_id', name=op.f('pk_devices'))
    )
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_devices_device_group'), ['device_group'], unique=False)

    op.create_table('heartbeats',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('model_version', sa.Integer(), nullable=True),
    sa.Column('readings_received', sa.Integer(), nullable=False),
    sa.Column('readings_scored', sa.Integer(), nullable=False),
    sa.Column('anomalies', sa.Integer(), nullable=False),
    sa.Column('rejected', sa.Integer(), nullable=False),
    sa.Column('queue_depth', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_heartbeats'))
    )
    with op.batch_alter_table('heartbeats', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_heartbeats_device_id'), ['device_id'], unique=False)

    op.create_table('model_versions',
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('source', sa.String(length=500), nullable=False),
    sa.Column('artifacts_dir', sa.String(length=1000), nullable=False),
    sa.Column('training', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('version', name=op.f('pk_model_versions'))
    )
    op.create_table('status_changes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('msg_id', sa.String(length=80), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('model_state', sa.String(length=16), nullable=False),
    sa.Column('model_version', sa.Integer(), nullable=True),
    sa.Column('failed_version', sa.Integer(), nullable=True),
    sa.Column('rollout_id', sa.Integer(), nullable=True),
    sa.Column('error', sa.String(length=500), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_status_changes')),
    sa.UniqueConstraint('device_id', 'msg_id', name=op.f('uq_status_changes_device_id'))
    )
    with op.batch_alter_table('status_changes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_status_changes_device_id'), ['device_id'], unique=False)

    op.create_table('sync_batches',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('batch_id', sa.String(length=64), nullable=False),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.Column('start_ts', sa.Float(), nullable=False),
    sa.Column('end_ts', sa.Float(), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('features', sa.JSON(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('flags', sa.LargeBinary(), nullable=False),
    sa.Column('model_version', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sync_batches')),
    sa.UniqueConstraint('device_id', 'batch_id', name=op.f('uq_sync_batches_device_id'))
    )
    with op.batch_alter_table('sync_batches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sync_batches_device_id'), ['device_id'], unique=False)

    op.create_table('bundles',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('quantization', sa.String(length=16), nullable=False),
    sa.Column('path', sa.String(length=1000), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('agreement', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['version'], ['model_versions.version'], name=op.f('fk_bundles_version_model_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bundles')),
    sa.UniqueConstraint('version', 'quantization', name=op.f('uq_bundles_version'))
    )
    op.create_table('rollouts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('bundle_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('state', sa.Enum('ACTIVE', 'SUPERSEDED', name='rolloutstate', native_enum=False), nullable=False),
    sa.ForeignKeyConstraint(['bundle_id'], ['bundles.id'], name=op.f('fk_rollouts_bundle_id_bundles')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rollouts'))
    )
    op.create_table('rollout_devices',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('state', sa.Enum('PENDING', 'REQUESTED', 'ACTIVATED', 'FAILED', name='devicerolloutstate', native_enum=False), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('detail', sa.String(length=500), nullable=False),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], name=op.f('fk_rollout_devices_rollout_id_rollouts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rollout_devices')),
    sa.UniqueConstraint('rollout_id', 'device_id', name=op.f('uq_rollout_devices_rollout_id'))
    )
    with op.batch_alter_table('rollout_devices', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollout_devices_rollout_id'), ['rollout_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('rollout_devices', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollout_devices_rollout_id'))

    op.drop_table('rollout_devices')
    op.drop_table('rollouts')
    op.drop_table('bundles')
    with op.batch_alter_table('sync_batches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sync_batches_device_id'))

    op.drop_table('sync_batches')
    with op.batch_alter_table('status_changes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_status_changes_device_id'))

    op.drop_table('status_changes')
    op.drop_table('model_versions')
    with op.batch_alter_table('heartbeats', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_heartbeats_device_id'))

    op.drop_table('heartbeats')
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_devices_device_group'))

    op.drop_table('devices')
    with op.batch_alter_table('anomaly_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_anomaly_events_ts'))
        batch_op.drop_index(batch_op.f('ix_anomaly_events_device_id'))

    op.drop_table('anomaly_events')
