"""Registry tables (labels, lineage, champions, retrain decisions) and the profile a bundle was exported for.

Revision ID: 0002
Revises: '0001'
Create Date: 2026-11-23 14:13:50.556250
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('retrain_decisions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_group', sa.String(length=64), nullable=False),
    sa.Column('trigger', sa.Enum('MANUAL', 'SCHEDULE', 'NEW_DATA', 'DATA_DRIFT', 'ANOMALY_RATE', 'PROMOTE', name='retraintrigger', native_enum=False, length=32), nullable=False),
    sa.Column('trigger_detail', sa.JSON(), nullable=False),
    sa.Column('started_at', sa.Float(), nullable=False),
    sa.Column('finished_at', sa.Float(), nullable=False),
    sa.Column('outcome', sa.Enum('PROMOTED', 'KEPT_CHAMPION', 'FAILED', name='retrainoutcome', native_enum=False, length=32), nullable=False),
    sa.Column('champion_version', sa.Integer(), nullable=True),
    sa.Column('challenger_version', sa.Integer(), nullable=True),
    sa.Column('margin', sa.Float(), nullable=False),
    sa.Column('numbers', sa.JSON(), nullable=False),
    sa.Column('rollout_id', sa.Integer(), nullable=True),
    sa.Column('detail', sa.String(length=1000), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_retrain_decisions'))
    )
    with op.batch_alter_table('retrain_decisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_retrain_decisions_device_group'), ['device_group'], unique=False)

    op.create_table('anomaly_labels',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('anomaly_id', sa.Integer(), nullable=False),
    sa.Column('label', sa.Enum('TRUE_POSITIVE', 'FALSE_POSITIVE', name='labelkind', native_enum=False, length=32), nullable=False),
    sa.Column('note', sa.String(length=1000), nullable=False),
    sa.Column('labelled_at', sa.Float(), nullable=False),
    sa.Column('labelled_by', sa.String(length=64), nullable=False),
    sa.Column('current', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['anomaly_id'], ['anomaly_events.id'], name=op.f('fk_anomaly_labels_anomaly_id_anomaly_events')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_anomaly_labels'))
    )
    with op.batch_alter_table('anomaly_labels', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_anomaly_labels_anomaly_id'), ['anomaly_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_anomaly_labels_current'), ['current'], unique=False)

    op.create_table('champions',
    sa.Column('device_group', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('promoted_at', sa.Float(), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.ForeignKeyConstraint(['version'], ['model_versions.version'], name=op.f('fk_champions_version_model_versions')),
    sa.PrimaryKeyConstraint('device_group', name=op.f('pk_champions'))
    )
    op.create_table('model_lineage',
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('parent_version', sa.Integer(), nullable=True),
    sa.Column('device_group', sa.String(length=64), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['version'], ['model_versions.version'], name=op.f('fk_model_lineage_version_model_versions')),
    sa.PrimaryKeyConstraint('version', name=op.f('pk_model_lineage'))
    )
    with op.batch_alter_table('bundles', schema=None) as batch_op:
        # Existing bundles get "" (no profile); the default is the ORM's, not the database's.
        batch_op.add_column(sa.Column('profile', sa.String(length=64), nullable=False, server_default=''))
    with op.batch_alter_table('bundles', schema=None) as batch_op:
        batch_op.alter_column('profile', server_default=None)



def downgrade() -> None:
    with op.batch_alter_table('bundles', schema=None) as batch_op:
        batch_op.drop_column('profile')

    op.drop_table('model_lineage')
    op.drop_table('champions')
    with op.batch_alter_table('anomaly_labels', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_anomaly_labels_current'))
        batch_op.drop_index(batch_op.f('ix_anomaly_labels_anomaly_id'))

    op.drop_table('anomaly_labels')
    with op.batch_alter_table('retrain_decisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_retrain_decisions_device_group'))

    op.drop_table('retrain_decisions')
