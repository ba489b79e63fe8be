"""Login hardening: random public user ids, server-side sign-in sessions, counted voice failures,
embeddings of recent accepted attempts (for replay refusal), spoken challenges issued over HTTP.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""
import secrets

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    # Plain ADD COLUMN (no batch rebuild), so the tables' triggers and rows stay as they are;
    # SQLite cannot add a column with a random default, so existing rows are filled in here.
    op.add_column('users', sa.Column('public_id', sa.String(length=32), nullable=True))
    connection = op.get_bind()
    for (user_id,) in connection.execute(sa.text('SELECT id FROM users')).fetchall():
        connection.execute(sa.text('UPDATE users SET public_id = :p WHERE id = :id'),
                           {'p': secrets.token_hex(16), 'id': user_id})
    op.create_index(op.f('ix_users_public_id'), 'users', ['public_id'], unique=True)
    op.create_table('auth_sessions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('admin_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['admin_id'], ['admin_accounts.id'], name=op.f('fk_auth_sessions_admin_id_admin_accounts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_auth_sessions_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_auth_sessions')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_auth_sessions_token_hash'))
    )
    op.create_index(op.f('ix_auth_sessions_user_id'), 'auth_sessions', ['user_id'], unique=False)
    op.create_index(op.f('ix_auth_sessions_admin_id'), 'auth_sessions', ['admin_id'], unique=False)
    op.create_table('voice_failures',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('claim', sa.String(length=64), nullable=True),
    sa.Column('client_addr', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_voice_failures'))
    )
    op.create_index(op.f('ix_voice_failures_client_addr'), 'voice_failures', ['client_addr'], unique=False)
    op.create_index(op.f('ix_voice_failures_created_at'), 'voice_failures', ['created_at'], unique=False)
    op.create_table('recent_voices',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('embedding', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_recent_voices_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_recent_voices'))
    )
    op.create_index(op.f('ix_recent_voices_user_id'), 'recent_voices', ['user_id'], unique=False)
    op.create_index(op.f('ix_recent_voices_created_at'), 'recent_voices', ['created_at'], unique=False)

    op.create_table('login_challenges',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('digits', sa.String(length=16), nullable=False),
    sa.Column('claim', sa.String(length=64), nullable=True),
    sa.Column('client_addr', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('used_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_login_challenges'))
    )
    op.create_index(op.f('ix_login_challenges_expires_at'), 'login_challenges', ['expires_at'], unique=False)


def downgrade():
    op.drop_table('login_challenges')
    op.drop_table('recent_voices')
    op.drop_table('voice_failures')
    op.drop_table('auth_sessions')
    op.drop_index(op.f('ix_users_public_id'), table_name='users')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('public_id')
