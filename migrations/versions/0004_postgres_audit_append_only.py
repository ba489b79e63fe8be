"""The audit log is append-only on PostgreSQL too: triggers refuse UPDATE, DELETE and TRUNCATE.

As on SQLite (0001), the one change allowed is clearing a user name (claimed_user, matched_user)
when that user is deleted. The row is compared as a whole (to_jsonb), so a column added later
is frozen as well without touching this trigger. Nothing changes on SQLite.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_NAMES = ("claimed_user", "matched_user")
_RENAMED = " OR ".join(f"(NEW.{c} IS DISTINCT FROM OLD.{c} AND NEW.{c} IS NOT NULL)" for c in _NAMES)
_WITHOUT_NAMES = " - ".join(f"'{c}'" for c in _NAMES)

FUNCTION = f"""
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND to_jsonb(NEW) - {_WITHOUT_NAMES} = to_jsonb(OLD) - {_WITHOUT_NAMES}
       AND NOT ({_RENAMED}) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit log is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$
"""
TRIGGERS = (
    "CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()",
    "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()",
)


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    for statement in TRIGGERS:
        op.execute(statement)


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
    op.execute("DROP TRIGGER IF EXISTS audit_events_no_change ON audit_events")
    op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
