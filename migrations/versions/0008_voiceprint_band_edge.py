"""Voiceprints keep the band their enrollment was recorded in: where its high band lay (dB), never audio.

A telephone-band login is held to the voiceprint's telephone copy only when its band lies well
under the enrollment's own (app/gate/decide.py, PHONE_COPY_GAP_DB). Existing voiceprints keep NULL
and are scored as before: every telephone-band login against the telephone copy.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    # Plain ADD COLUMN of a nullable column: no table rebuild, rows and triggers stay as they are.
    op.add_column('voiceprints', sa.Column('band_edge_db', sa.Float(), nullable=True))


def downgrade():
    # Plain DROP COLUMN (SQLite 3.35+, PostgreSQL): a batch rebuild would drop the table's triggers.
    op.execute('ALTER TABLE voiceprints DROP COLUMN band_edge_db')
