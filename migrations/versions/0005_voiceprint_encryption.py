"""Voiceprints at rest are sealed with a key of their own, kept in the keystore outside the database.

Every existing voiceprint gets a fresh key (app/store/keystore.py) and its centroid and clip embeddings
are encrypted in place (app/store/vault.py); the replay memory of recent accepts is sealed with the
same key. Runs through ``flask db upgrade``: it needs the app's keystore path and secret key.

Copies of the database taken BEFORE this upgrade hold the voiceprints in plain form: replace
them with a backup taken after it (README, "Voiceprints at rest"). On PostgreSQL the old row
versions stay in the table files until it is vacuumed; ``VACUUM FULL voiceprints, recent_voices``
after the upgrade rewrites them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

_SEALED = ("clip_embeddings", "centroid")


def _app():
    from flask import current_app

    try:
        return current_app._get_current_object()
    except RuntimeError:
        raise RuntimeError("this migration needs the app's keystore: run it with `flask db upgrade`") from None


def upgrade():
    from app.store import vault

    store = vault.keystore(_app())
    op.add_column('voiceprints', sa.Column('key_id', sa.String(length=32), nullable=True))
    connection = op.get_bind()
    voiceprints = connection.execute(sa.text('SELECT id, user_id, clip_embeddings, centroid FROM voiceprints')).all()
    keys = {}
    for row_id, user_id, clips, centroid in voiceprints:
        key_id, key = store.create()
        keys[user_id] = (key_id, key)
        sealed = {column: vault.seal(key, key_id, f"voiceprints.{column}", bytes(value))
                  for column, value in zip(_SEALED, (clips, centroid))}
        connection.execute(sa.text('UPDATE voiceprints SET key_id = :k, clip_embeddings = :c, centroid = :m '
                                   'WHERE id = :id'),
                           {'k': key_id, 'c': sealed['clip_embeddings'], 'm': sealed['centroid'], 'id': row_id})
    for row_id, user_id, embedding in connection.execute(
            sa.text('SELECT id, user_id, embedding FROM recent_voices')).all():
        if user_id not in keys:  # no voiceprint to seal it with: nothing of that voice is kept
            connection.execute(sa.text('DELETE FROM recent_voices WHERE id = :id'), {'id': row_id})
            continue
        key_id, key = keys[user_id]
        connection.execute(sa.text('UPDATE recent_voices SET embedding = :e WHERE id = :id'),
                           {'e': vault.seal(key, key_id, "recent_voices.embedding", bytes(embedding)), 'id': row_id})
    with op.batch_alter_table('voiceprints', schema=None) as batch_op:
        batch_op.alter_column('key_id', existing_type=sa.String(length=32), nullable=False)


def downgrade():
    from app.store import vault

    store = vault.keystore(_app())
    connection = op.get_bind()
    voiceprints = connection.execute(
        sa.text('SELECT id, user_id, key_id, clip_embeddings, centroid FROM voiceprints')).all()
    # Every key first (nothing written if one is missing), then the rows in plain form.
    keys = store.get_many(key_id for _, _, key_id, _, _ in voiceprints)
    missing = {key_id for _, _, key_id, _, _ in voiceprints} - set(keys)
    if missing:
        raise RuntimeError(f"{len(missing)} voiceprint keys are missing from the keystore; cannot decrypt")
    by_user = {}
    for row_id, user_id, key_id, clips, centroid in voiceprints:
        by_user[user_id] = key_id
        plain = {column: vault.unseal(keys[key_id], key_id, f"voiceprints.{column}", bytes(value))
                 for column, value in zip(_SEALED, (clips, centroid))}
        connection.execute(sa.text('UPDATE voiceprints SET clip_embeddings = :c, centroid = :m WHERE id = :id'),
                           {'c': plain['clip_embeddings'], 'm': plain['centroid'], 'id': row_id})
    for row_id, user_id, embedding in connection.execute(
            sa.text('SELECT id, user_id, embedding FROM recent_voices')).all():
        key_id = by_user.get(user_id)
        if key_id is None:
            connection.execute(sa.text('DELETE FROM recent_voices WHERE id = :id'), {'id': row_id})
            continue
        connection.execute(sa.text('UPDATE recent_voices SET embedding = :e WHERE id = :id'),
                           {'e': vault.unseal(keys[key_id], key_id, "recent_voices.embedding", bytes(embedding)),
                            'id': row_id})
    with op.batch_alter_table('voiceprints', schema=None) as batch_op:
        batch_op.drop_column('key_id')
    for key_id in keys:
        store.destroy(key_id)
