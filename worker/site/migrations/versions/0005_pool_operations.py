"""pool operations: Azure pools created through the API in the background (provisioning -> ready | failed)

Revision ID: 0005_pool_operations
Revises: 0004_reliability
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import worker.site.models

revision = '0005_pool_operations'
down_revision = '0004_reliability'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'pool_operations',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('pool', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('stack', sa.String(length=128), nullable=True),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.Column('output_tail', sa.Text(), nullable=True),
        sa.Column('outputs', sa.JSON(), nullable=True),
        sa.Column('replica', sa.String(length=128), nullable=False),
        sa.Column('requested_by', sa.String(length=128), nullable=True),
        sa.Column('started_at', worker.site.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('heartbeat_at', worker.site.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('finished_at', worker.site.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('pool_operations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pool_operations_pool'), ['pool'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('pool_operations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pool_operations_pool'))
    op.drop_table('pool_operations')
