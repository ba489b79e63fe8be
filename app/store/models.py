"""The database rows: users, voiceprints, the audit log, admin accounts, invites, settings.

No audio is ever stored: a voiceprint is a handful of embeddings (float32 bytes), and those are
stored only sealed with the voiceprint's own key, which lives outside the database (app/store/vault.py).
"""
from __future__ import annotations

import hashlib
import json
import secrets
from datetime import datetime, timedelta, timezone

import numpy as np
from sqlalchemy import Float, ForeignKey, Integer, LargeBinary, String, Text, delete, false, select, update
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from ..engines.fused import PART_DIM
from . import vault
from .db import db


def utcnow() -> datetime:
    """Return the current UTC time without tzinfo (how SQLite hands it back)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_public_id() -> str:
    """Return a fresh random account id."""
    return secrets.token_hex(16)


class User(db.Model):
    """A person who may enroll a voice and then log in or dictate with it."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    # What tokens, cookies and dictation keys name: random, so never reused as a row id can be.
    public_id: Mapped[str | None] = mapped_column(String(32), index=True, unique=True, default=new_public_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128), default="")
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Consecutive rejected voice attempts, and until when voice login is locked.
    failed_attempts: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[datetime | None]
    # The personal dictation key is derived from the secret key and this number
    # (app/dictation_keys.py), so it is never stored; revoking it bumps the number.
    dictation_key_version: Mapped[int] = mapped_column(default=1, server_default="1")

    voiceprint: Mapped[Voiceprint | None] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )
    invites: Mapped[list[EnrollmentInvite]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def enrolled(self) -> bool:
        """Return True when the user has a voiceprint."""
        return self.voiceprint is not None

    def is_locked(self) -> bool:
        """Return True while voice login is locked after repeated rejects."""
        return self.locked_until is not None and self.locked_until > utcnow()

    def record_attempt(self, accepted: bool, attempts: int, lock_seconds: int) -> None:
        """Count a voice attempt; ``attempts`` rejects in a row lock voice login for a while."""
        if accepted:
            self.failed_attempts = 0
            self.locked_until = None
            return
        self.failed_attempts += 1
        if self.failed_attempts >= attempts:
            self.failed_attempts = 0
            self.locked_until = utcnow() + timedelta(seconds=lock_seconds)

    @classmethod
    def by_name(cls, name: str) -> User | None:
        """Return the user called ``name``, or None."""
        return db.session.scalar(select(cls).where(cls.name == name))

    @classmethod
    def by_public_id(cls, public_id: str) -> User | None:
        """Return the user whose public id is ``public_id``, or None."""
        return db.session.scalar(select(cls).where(cls.public_id == public_id)) if public_id else None

    def forget_voice(self) -> None:
        """Erase the user's voiceprint and remembered voices: destroy their key, then delete the rows.

        The key goes first and at once, so that no copy of the rows (a backup, the WAL) can be read
        even if this transaction never commits. The caller commits.
        """
        key_ids = db.session.scalars(select(Voiceprint.key_id).where(Voiceprint.user_id == self.id)).all()
        for key_id in key_ids:
            vault.destroy(key_id)
        db.session.execute(delete(RecentVoice).where(RecentVoice.user_id == self.id))
        db.session.execute(delete(Voiceprint).where(Voiceprint.user_id == self.id))
        db.session.expire(self, ["voiceprint"])

    def erase(self) -> None:
        """Delete the user and their voiceprint, and remove their name from the audit log.

        The audit events stay, anonymised. The caller commits.
        """
        self.forget_voice()
        for column in (AuditEvent.claimed_user, AuditEvent.matched_user):
            db.session.execute(update(AuditEvent).where(column == self.name).values({column: None}))
        db.session.delete(self)


class Voiceprint(db.Model):
    """A user's enrolled voice: per-clip embeddings and their centroid, float32, sealed with the key ``key_id``."""

    __tablename__ = "voiceprints"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    model_id: Mapped[str] = mapped_column(String(128))
    dim: Mapped[int] = mapped_column(Integer)
    clip_count: Mapped[int] = mapped_column(Integer)
    clip_embeddings: Mapped[bytes] = mapped_column(LargeBinary)
    centroid: Mapped[bytes] = mapped_column(LargeBinary)
    speech_seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The keystore's id of the key that seals the embeddings (never the key).
    key_id: Mapped[str] = mapped_column(String(32))
    # Centroids of the clips' embeddings through other channels (app/audio/augment.py): comma-
    # separated names, and float32 rows in that order sealed like the rest; NULL on voiceprints
    # enrolled before them (migration 0007).
    channels: Mapped[str | None] = mapped_column(String(64))
    channel_centroids: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The enrollment clips' median band edge (calibration.band_edge, dB): how much high band the
    # voice was recorded with. NULL on voiceprints enrolled before it (migration 0008).
    band_edge_db: Mapped[float | None] = mapped_column(Float)

    user: Mapped[User] = relationship(back_populates="voiceprint")

    @classmethod
    def from_embeddings(cls, clips: np.ndarray, model_id: str, speech_seconds: float,
                        channels: dict[str, np.ndarray] | None = None, band_edge_db: float | None = None) -> Voiceprint:
        """Build a voiceprint from unit-length clip embeddings (clips × dim), sealed with a new key.

        ``channels``: per channel the clips' copies' embeddings; ``band_edge_db``: the clips'
        median band edge (``band_edge_db`` above).
        """
        clips = np.asarray(clips, dtype="<f4")
        mean = clips.mean(axis=0)
        centroid = mean / np.linalg.norm(mean)
        key_id, key = vault.new_key()
        rows = [np.asarray(v, dtype=np.float64).mean(axis=0) for v in (channels or {}).values()]
        copies = np.stack([r / np.linalg.norm(r) for r in rows]).astype("<f4").tobytes() if rows else None
        return cls(
            channels=",".join(channels) if channels else None,
            channel_centroids=vault.seal(key, key_id, "voiceprints.channel_centroids", copies) if copies else None,
            model_id=model_id,
            dim=clips.shape[1],
            clip_count=clips.shape[0],
            clip_embeddings=vault.seal(key, key_id, "voiceprints.clip_embeddings", clips.tobytes()),
            centroid=vault.seal(key, key_id, "voiceprints.centroid", centroid.astype("<f4").tobytes()),
            speech_seconds=float(speech_seconds),
            key_id=key_id,
            band_edge_db=None if band_edge_db is None else float(band_edge_db),
        )

    @property
    def ecapa_only(self) -> bool:
        """Return True for a voiceprint of ECAPA alone (enrolled before CAM++ joined it): scored by ECAPA alone.

        No audio is kept, so it cannot be re-derived with both models: only enrolling again can.
        """
        return self.dim == PART_DIM

    def centroid_vector(self) -> np.ndarray:
        """Return the centroid as a float32 vector; raise VoiceprintUnavailable if its key is gone."""
        return np.frombuffer(self._open("centroid"), dtype="<f4")

    def clip_vectors(self) -> np.ndarray:
        """Return the per-clip embeddings (clips × dim float32); raise VoiceprintUnavailable if its key is gone."""
        return np.frombuffer(self._open("clip_embeddings"), dtype="<f4").reshape(self.clip_count, self.dim)

    def channel_vectors(self) -> dict[str, np.ndarray]:
        """Return the centroid of each channel's copies of the clips, by name (empty on older voiceprints)."""
        if not self.channels or not self.channel_centroids:
            return {}
        names = self.channels.split(",")
        rows = np.frombuffer(self._open("channel_centroids"), dtype="<f4").reshape(len(names), self.dim)
        return dict(zip(names, rows))

    def seal_recent(self, embedding: np.ndarray) -> bytes:
        """Return an accepted attempt's embedding sealed with this voiceprint's key (for RecentVoice)."""
        return vault.seal(vault.key(self.key_id), self.key_id, "recent_voices.embedding",
                          np.asarray(embedding, dtype="<f4").tobytes())

    def open_recent(self, sealed: list[bytes]) -> list[np.ndarray]:
        """Return the embeddings of RecentVoice rows sealed by ``seal_recent``."""
        key = vault.key(self.key_id) if sealed else b""
        return [np.frombuffer(vault.unseal(key, self.key_id, "recent_voices.embedding", row), dtype="<f4")
                for row in sealed]

    def _open(self, column: str) -> bytes:
        return vault.unseal(vault.key(self.key_id), self.key_id, f"voiceprints.{column}", getattr(self, column))


class AuditEvent(db.Model):
    """One decision the service made. Append-only (enforced by triggers on SQLite and PostgreSQL).

    Never holds audio or transcript text. The only change allowed after insertion is
    clearing a user's name when that user is deleted.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    request_id: Mapped[str] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # enroll, verify, identify, transcribe
    protocol: Mapped[str] = mapped_column(String(16))  # ws, http, kaldi, cli
    claimed_user: Mapped[str | None] = mapped_column(String(64), index=True)
    matched_user: Mapped[str | None] = mapped_column(String(64))
    score: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    decision: Mapped[str] = mapped_column(String(24), index=True)
    reason: Mapped[str | None] = mapped_column(String(64))
    audio_seconds: Mapped[float | None] = mapped_column(Float)
    client_addr: Mapped[str | None] = mapped_column(String(64))


class AdminAccount(db.Model):
    """Someone allowed into the admin screens."""

    __tablename__ = "admin_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Sign-in throttling: failed sign-ins in a row, and until when sign-in is refused.
    failed_logins: Mapped[int] = mapped_column(default=0, server_default="0")
    locked_until: Mapped[datetime | None]

    def set_password(self, password: str) -> None:
        """Store a salted hash of ``password`` (never the password)."""
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        """Return True when ``password`` matches the stored hash."""
        return check_password_hash(self.password_hash, password)

    def is_locked(self) -> bool:
        """Return True while sign-in is refused after repeated wrong passwords."""
        return self.locked_until is not None and self.locked_until > utcnow()

    def record_sign_in(self, succeeded: bool, attempts: int, lock_seconds: int) -> None:
        """Count a sign-in; ``attempts`` wrong passwords in a row refuse sign-in for a while."""
        if succeeded:
            self.failed_logins = 0
            self.locked_until = None
            return
        self.failed_logins += 1
        if self.failed_logins >= attempts:
            self.failed_logins = 0
            self.locked_until = utcnow() + timedelta(seconds=lock_seconds)


class EnrollmentInvite(db.Model):
    """A one-time, expiring permission to enroll a voice for one user; only its hash is kept."""

    __tablename__ = "enrollment_invites"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(back_populates="invites")

    @staticmethod
    def hash_token(token: str) -> str:
        """Return the stored form of a token."""
        return hashlib.sha256(token.encode()).hexdigest()

    @classmethod
    def issue(cls, user: User, ttl: timedelta) -> tuple[EnrollmentInvite, str]:
        """Create an invite for ``user``; return it and the token, which is shown once."""
        token = secrets.token_urlsafe(24)
        invite = cls(user=user, token_hash=cls.hash_token(token), expires_at=utcnow() + ttl)
        db.session.add(invite)
        return invite, token

    @classmethod
    def find_valid(cls, token: str) -> EnrollmentInvite | None:
        """Return the unused, unexpired invite for ``token``, or None."""
        invite = db.session.scalar(select(cls).where(cls.token_hash == cls.hash_token(token)))
        if invite is None or invite.used_at is not None or invite.expires_at <= utcnow():
            return None
        return invite


class Setting(db.Model):
    """A policy value changed by an admin; it overrides the configured default until cleared."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)  # JSON
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(64))

    @classmethod
    def stored(cls) -> dict[str, object]:
        """Return every stored value by key, decoded from JSON."""
        return {row.key: json.loads(row.value) for row in db.session.scalars(select(cls))}

    @classmethod
    def put(cls, key: str, value: object, updated_by: str | None) -> None:
        """Store ``value`` under ``key`` (None clears it, back to the default). The caller commits."""
        row = db.session.get(cls, key)
        if value is None:
            if row is not None:
                db.session.delete(row)
            return
        if row is None:
            row = cls(key=key)
            db.session.add(row)
        row.value, row.updated_by = json.dumps(value), updated_by


class AuthSession(db.Model):
    """A signed-in browser session of a user or an admin; the cookie holds its token, this row its hash.

    Deleting the row (sign-out, a password change, the account's deletion) ends the session.
    """

    __tablename__ = "auth_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    admin_id: Mapped[int | None] = mapped_column(ForeignKey("admin_accounts.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]

    @classmethod
    def start(cls, ttl: timedelta, user_id: int | None = None, admin_id: int | None = None) -> str:
        """Add a session for the user or the admin; return its token (for the cookie). The caller commits."""
        token = secrets.token_urlsafe(24)
        db.session.add(cls(token_hash=EnrollmentInvite.hash_token(token), user_id=user_id, admin_id=admin_id,
                           expires_at=utcnow() + ttl))
        return token

    @classmethod
    def find(cls, token: object) -> AuthSession | None:
        """Return the unexpired session of ``token``, or None."""
        if not isinstance(token, str) or not token:
            return None
        row = db.session.scalar(select(cls).where(cls.token_hash == EnrollmentInvite.hash_token(token)))
        return row if row is not None and row.expires_at > utcnow() else None

    @classmethod
    def end(cls, token: object) -> None:
        """Delete the session of ``token``, if any. The caller commits."""
        if isinstance(token, str) and token:
            db.session.execute(delete(cls).where(cls.token_hash == EnrollmentInvite.hash_token(token)))

    @classmethod
    def end_admin_sessions(cls, admin_id: int, keep: object = None) -> None:
        """Delete every session of admin ``admin_id`` but the one of token ``keep``. The caller commits."""
        query = delete(cls).where(cls.admin_id == admin_id)
        if isinstance(keep, str) and keep:
            query = query.where(cls.token_hash != EnrollmentInvite.hash_token(keep))
        db.session.execute(query)


class VoiceFailure(db.Model):
    """One failed voice attempt from a client address, claimed user or none (1:N); counted for limits.

    Rows older than the lockout window are pruned as new ones arrive; no audio, no score.
    """

    __tablename__ = "voice_failures"

    id: Mapped[int] = mapped_column(primary_key=True)
    claim: Mapped[str | None] = mapped_column(String(64))
    client_addr: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # An attempt being decided, counted in advance (app.gate.store.hold_attempt): it counts
    # towards the limits, but only failures decided make the next attempt wait.
    pending: Mapped[bool] = mapped_column(default=False, server_default=false())


class RecentVoice(db.Model):
    """The embedding of a recently accepted attempt, kept for a while to refuse its replay (never audio).

    Sealed with the key of the user's voiceprint (Voiceprint.seal_recent), so it is erased with it.
    """

    __tablename__ = "recent_voices"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class LoginChallenge(db.Model):
    """A spoken challenge issued over HTTP: its digits, whom and which client it is for, and its one use."""

    __tablename__ = "login_challenges"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    digits: Mapped[str] = mapped_column(String(16))
    claim: Mapped[str | None] = mapped_column(String(64))
    client_addr: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None]


class Version(db.Model):
    """A counter that database triggers bump whenever what it follows changes (voiceprints, settings).

    Each instance keeps a copy of what the counter follows (the matrix of voiceprints, the
    Whisper model in use) and refreshes it when the counter moved; ``streams`` is the row
    that serialises the taking of dictation slots.
    """

    __tablename__ = "versions"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


class AdminSigninFailure(db.Model):
    """One failed admin sign-in from a client address; every instance counts the same rows."""

    __tablename__ = "admin_signin_failures"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_addr: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # A sign-in whose password is being checked, counted in advance (as VoiceFailure.pending).
    pending: Mapped[bool] = mapped_column(default=False, server_default=false())


class StreamLease(db.Model):
    """A dictation slot held by one instance until ``expires_at``; the instance renews it while it lives.

    An instance killed outright stops renewing, so its slots free themselves when their leases run out.
    """

    __tablename__ = "stream_leases"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    instance: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
