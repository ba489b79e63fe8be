"""Voiceprints keep embeddings of their clips through other channels (a telephone line), never audio.

Existing voiceprints keep NULL here and are scored as before: against their clean centroid.
The centroids are sealed with the voiceprint's key like its other embeddings (0005).

Revision ID: 0007
Revises: 0006_shared_state
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006_shared_state'
branch_labels = None
depends_on = None


def upgrade():
    # Plain ADD COLUMN of nullable columns: no table rebuild, rows and triggers stay as they are.
    op.add_column('voiceprints', sa.Column('channels', sa.String(length=64), nullable=True))
    op.add_column('voiceprints', sa.Column('channel_centroids', sa.LargeBinary(), nullable=True))


def downgrade():
    # Plain DROP COLUMN (SQLite 3.35+, PostgreSQL): a batch rebuild would drop the table's triggers.
    op.execute('ALTER TABLE voiceprints DROP COLUMN channel_centroids')
    op.execute('ALTER TABLE voiceprints DROP COLUMN channels')
