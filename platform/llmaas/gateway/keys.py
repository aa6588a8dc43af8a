"""API keys: what a key may do, how a secret is made, and how it is stored (a hash only).

A secret is ``llmaas-`` + 32 random bytes (URL-safe base64). It is shown once, when the key is
created; the store keeps its SHA-256. NOTE: a fast hash is the right one for a 256-bit random
secret (it cannot be guessed, so there is nothing for a slow, salted hash to protect), and it
lets a router find a key by its hash in one indexed lookup. Passwords would be another matter.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid

from pydantic import BaseModel, ConfigDict, Field, field_validator

SECRET_PREFIX = "llmaas-"
_SECRET = re.compile(r"^llmaas-[A-Za-z0-9_-]{43}$")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def well_formed(secret: str) -> bool:
    return bool(_SECRET.fullmatch(secret))


class KeyLimits(BaseModel):
    """What a key may do; None means no limit."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] | None = Field(default=None, description="Model ids it may call; None: all.")
    rpm: int | None = Field(default=None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(default=None, ge=1, description="Prompt + completion tokens per minute.")
    max_fine_tuning_jobs: int | None = Field(
        default=None, ge=1, description="Fine-tuning jobs of the key queued or running at once."
    )
    max_trained_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Tokens the key's fine-tuning jobs may train on in all: its succeeded jobs' trained "
        "tokens plus what its queued and running jobs will train (file tokens x epochs).",
    )


class KeyRequest(KeyLimits):
    """The body of ``POST /admin/keys`` (and the CLI's ``keys create``)."""

    name: str = Field(min_length=1, max_length=128, description="Who or what the key is for.")
    admin: bool = Field(default=False, description="May use the admin routes.")
    expires_in_s: float | None = Field(default=None, gt=0, description="Lifetime; None: never expires.")

    @field_validator("models")
    @classmethod
    def _models_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("models is empty: list the model ids the key may call, or leave it out for all")
        return value


class ApiKey(KeyLimits):
    """A stored key: its limits and metadata, never its secret."""

    id: str
    name: str
    key_hash: str
    prefix: str = Field(description="The secret's first characters, to tell keys apart in listings.")
    admin: bool = False
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    def usable(self, now: float | None = None) -> str | None:
        """None when the key may be used now, else why not."""
        now = time.time() if now is None else now
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    def public(self) -> dict[str, object]:
        """What listings show (no hash)."""
        return self.model_dump(exclude={"key_hash"})


class NewKey(BaseModel):
    """A key just made: the stored record and its secret (shown once)."""

    key: ApiKey
    secret: str


def make_key(request: KeyRequest, now: float | None = None) -> NewKey:
    now = time.time() if now is None else now
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id="key_" + uuid.uuid4().hex[:16],
        name=request.name,
        key_hash=hash_secret(secret),
        prefix=secret[: len(SECRET_PREFIX) + 4],
        admin=request.admin,
        models=request.models,
        rpm=request.rpm,
        tpm=request.tpm,
        max_fine_tuning_jobs=request.max_fine_tuning_jobs,
        max_trained_tokens=request.max_trained_tokens,
        created_at=now,
        expires_at=now + request.expires_in_s if request.expires_in_s else None,
    )
    return NewKey(key=key, secret=secret)
