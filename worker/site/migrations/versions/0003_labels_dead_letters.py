"""task labels, the dead-letter record and replica leases (site service)

Revision ID: 9a01
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import worker.site.models

revision = '9a01'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'task_labels',
        sa.Column('task_id', sa.String(length=64), nullable=False),
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('value', sa.String(length=256), nullable=False),
        sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('task_id', 'key'),
    )
    op.create_index('ix_task_labels_key_value', 'task_labels', ['key', 'value'], unique=False)
    op.create_table(
        'dead_letters',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('pool', sa.String(length=64), nullable=False),
        sa.Column('queue', sa.String(length=260), nullable=False),
        sa.Column('message_id', sa.String(length=256), nullable=True),
        sa.Column('task_id', sa.String(length=64), nullable=True),
        sa.Column('attempt', sa.Integer(), nullable=True),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('description', sa.Text(), nullable=True),
        sa.Column('dead_lettered_at', worker.site.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('resubmitted_at', worker.site.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index(op.f('ix_dead_letters_pool'), 'dead_letters', ['pool'], unique=False)
    op.create_index(op.f('ix_dead_letters_task_id'), 'dead_letters', ['task_id'], unique=False)
    op.create_table(
        'site_leases',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('holder', sa.String(length=128), nullable=False),
        sa.Column('expires_at', worker.site.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )


def downgrade() -> None:
    op.drop_table('site_leases')
    op.drop_index(op.f('ix_dead_letters_task_id'), table_name='dead_letters')
    op.drop_index(op.f('ix_dead_letters_pool'), table_name='dead_letters')
    op.drop_table('dead_letters')
    op.drop_index('ix_task_labels_key_value', table_name='task_labels')
    op.drop_table('task_labels')
