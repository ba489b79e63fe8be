"""Shared state for several instances on one database: version counters (bumped by triggers),
admin sign-in failures per client address, voice attempts counted before they are decided
(pending), and expiring leases of dictation slots.

A later migration that rebuilds voiceprints, users or settings (an SQLite batch operation
copies the table) drops their triggers: it must create them again (``create_triggers``).

Revision ID: 0006_shared_state
Revises: 0005
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0006_shared_state'
down_revision = '0005'
branch_labels = None
depends_on = None

# What each counter follows: a change to any of these tables (or columns) bumps it in the same
# transaction, whoever makes it (the app, the CLI, a hand-written statement).
WATCHED = {
    'voiceprints': [('voiceprints', 'INSERT', None), ('voiceprints', 'DELETE', None),
                    ('voiceprints', 'UPDATE', None), ('users', 'UPDATE', 'active, name')],
    'settings': [('settings', 'INSERT', None), ('settings', 'DELETE', None), ('settings', 'UPDATE', None)],
}
# 'streams' and 'attempts' are never bumped: their rows are what takers of a dictation slot and
# checkers of a client's voice attempts lock, one at a time, on PostgreSQL.
COUNTERS = ('voiceprints', 'settings', 'streams', 'attempts')


def _trigger_name(counter, table, event):
    return f'{table}_{event.lower()}_bumps_{counter}'


def upgrade():
    op.create_table('versions',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('value', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_versions'))
    )
    op.bulk_insert(sa.table('versions', sa.column('name', sa.String), sa.column('value', sa.Integer)),
                   [{'name': name, 'value': 1} for name in COUNTERS])
    op.create_table('admin_signin_failures',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('client_addr', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('pending', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_admin_signin_failures'))
    )
    op.create_index(op.f('ix_admin_signin_failures_client_addr'), 'admin_signin_failures', ['client_addr'],
                    unique=False)
    op.create_index(op.f('ix_admin_signin_failures_created_at'), 'admin_signin_failures', ['created_at'],
                    unique=False)
    # Plain ADD COLUMN (no batch rebuild): SQLite fills the existing rows with the default.
    op.add_column('voice_failures', sa.Column('pending', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table('stream_leases',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('instance', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stream_leases'))
    )
    op.create_index(op.f('ix_stream_leases_instance'), 'stream_leases', ['instance'], unique=False)
    op.create_index(op.f('ix_stream_leases_expires_at'), 'stream_leases', ['expires_at'], unique=False)

    postgres = op.get_bind().dialect.name == 'postgresql'
    if postgres:
        op.execute("CREATE FUNCTION voicegate_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$ "
                   "BEGIN UPDATE versions SET value = value + 1 WHERE name = TG_ARGV[0]; RETURN NULL; END $$")
    create_triggers(postgres)


def create_triggers(postgres, tables=None):
    """Create the triggers that bump the counters (of ``tables`` only, when given)."""
    for counter, watched in WATCHED.items():
        for table, event, columns in watched:
            if tables is not None and table not in tables:
                continue
            name = _trigger_name(counter, table, event)
            on = f'{event} OF {columns}' if columns else event
            if postgres:
                op.execute(f"CREATE TRIGGER {name} AFTER {on} ON {table} "
                           f"FOR EACH STATEMENT EXECUTE FUNCTION voicegate_bump_version('{counter}')")
            else:
                op.execute(f"CREATE TRIGGER {name} AFTER {on} ON {table} BEGIN "
                           f"UPDATE versions SET value = value + 1 WHERE name = '{counter}'; END")


def downgrade():
    postgres = op.get_bind().dialect.name == 'postgresql'
    for counter, watched in WATCHED.items():
        for table, event, _columns in watched:
            name = _trigger_name(counter, table, event)
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}" if postgres else f"DROP TRIGGER IF EXISTS {name}")
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS voicegate_bump_version()")
    op.drop_table('stream_leases')
    with op.batch_alter_table('voice_failures', schema=None) as batch_op:
        batch_op.drop_column('pending')
    op.drop_table('admin_signin_failures')
    op.drop_table('versions')
