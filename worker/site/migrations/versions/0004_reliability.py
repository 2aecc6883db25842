"""reliability: failure attribution (tasks and history), infrastructure retries, fair admission, refused cross-pool reports

Revision ID: 0004_reliability
Revises: 9a01
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import worker.site.models

revision = '0004_reliability'
down_revision = '9a01'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.add_column(sa.Column('max_in_flight', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('max_in_flight_per_label', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('retry_budget', sa.Integer(), server_default='3', nullable=False))
        batch_op.add_column(sa.Column('retry_backoff_s', sa.Float(), server_default='5', nullable=False))
        batch_op.add_column(sa.Column('retry_backoff_max_s', sa.Float(), server_default='300', nullable=False))
        batch_op.add_column(sa.Column('wrong_pool_reports', sa.Integer(), server_default='0', nullable=False))
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('label', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('priority', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('failure_class', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('failure_code', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('infra_retries', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('not_before', worker.site.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_tasks_pool_state', ['pool', 'state'], unique=False)
    with op.batch_alter_table('task_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failure_class', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('failure_code', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('task_events', schema=None) as batch_op:
        batch_op.drop_column('failure_code')
        batch_op.drop_column('failure_class')
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index('ix_tasks_pool_state')
        batch_op.drop_column('not_before')
        batch_op.drop_column('infra_retries')
        batch_op.drop_column('failure_code')
        batch_op.drop_column('failure_class')
        batch_op.drop_column('priority')
        batch_op.drop_column('label')
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.drop_column('wrong_pool_reports')
        batch_op.drop_column('retry_backoff_max_s')
        batch_op.drop_column('retry_backoff_s')
        batch_op.drop_column('retry_budget')
        batch_op.drop_column('max_in_flight_per_label')
        batch_op.drop_column('max_in_flight')
