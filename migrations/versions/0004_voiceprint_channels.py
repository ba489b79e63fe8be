"""Voiceprints keep embeddings of their clips through other channels (a telephone line), never audio.

Existing voiceprints keep NULL here and are scored as before: against their clean centroid.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    # Plain ADD COLUMN of nullable columns: no table rebuild, rows and triggers stay as they are.
    op.add_column('voiceprints', sa.Column('channels', sa.String(length=64), nullable=True))
    op.add_column('voiceprints', sa.Column('channel_centroids', sa.LargeBinary(), nullable=True))


def downgrade():
    with op.batch_alter_table('voiceprints') as batch_op:
        batch_op.drop_column('channel_centroids')
        batch_op.drop_column('channels')
