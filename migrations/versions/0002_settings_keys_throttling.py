"""Settings table, per-user dictation key version, admin sign-in throttling.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('settings',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('updated_by', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_settings'))
    )
    # Plain ADD COLUMN (no batch rebuild), so the tables' triggers and rows stay as they are.
    op.add_column('users', sa.Column('dictation_key_version', sa.Integer(), server_default='1', nullable=False))
    op.add_column('admin_accounts', sa.Column('failed_logins', sa.Integer(), server_default='0', nullable=False))
    op.add_column('admin_accounts', sa.Column('locked_until', sa.DateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table('admin_accounts', schema=None) as batch_op:
        batch_op.drop_column('locked_until')
        batch_op.drop_column('failed_logins')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('dictation_key_version')
    op.drop_table('settings')
