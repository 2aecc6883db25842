"""worker presence: activity, reported_at, interval_s, left_at on workers

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import worker.site.models

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('activity', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('reported_at', worker.site.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('interval_s', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('left_at', worker.site.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_column('left_at')
        batch_op.drop_column('interval_s')
        batch_op.drop_column('reported_at')
        batch_op.drop_column('activity')
