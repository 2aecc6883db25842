"""pool operations: at most one provisioning operation per pool (a partial unique index), so two
replicas accepting a create of the same pool at once cannot both deploy it

Revision ID: 0006_one_provisioning
Revises: 0005_pool_operations
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006_one_provisioning'
down_revision = '0005_pool_operations'
branch_labels = None
depends_on = None

WHERE = sa.text("state = 'provisioning'")


def upgrade() -> None:
    with op.batch_alter_table('pool_operations', schema=None) as batch_op:
        batch_op.create_index('ux_pool_operations_provisioning', ['pool'], unique=True,
                              sqlite_where=WHERE, postgresql_where=WHERE)


def downgrade() -> None:
    with op.batch_alter_table('pool_operations', schema=None) as batch_op:
        batch_op.drop_index('ux_pool_operations_provisioning')
