"""The gateway section of a catalog: API keys, per-key limits and the usage ledger."""

from __future__ import annotations

from pydantic import Field, field_validator

from llmaas.config.base import BaseConfig

DATABASE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")


class GatewayConfig(BaseConfig):
    """API keys and the usage ledger. Leaving ``gateway`` out of a catalog turns both off."""

    auth: bool = Field(
        default=True,
        description=(
            "Require an API key (Authorization: Bearer ...) on every model route; admin routes need an "
            "admin key. False keeps the ledger but lets anyone call (rows carry no key)."
        ),
    )
    database: str = Field(
        default="sqlite:///~/.cache/llmaas/gateway.db",
        description=(
            "Where keys and the usage ledger live: sqlite:///PATH (default) or postgresql://USER@HOST/DB "
            "(needs the postgres extra: pip install 'llmaas[postgres]')."
        ),
    )
    ledger: bool = Field(default=True, description="Write one usage row per request.")
    key_refresh_s: float = Field(
        default=2.0,
        gt=0,
        le=300,
        description="How soon a key revoked or changed in the database (e.g. by the CLI) takes effect.",
    )
    commit_interval_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description=(
            "How long the ledger waits for more rows before a commit. 0: commit at once; rows that "
            "arrive during a commit go into the next one, so groups form under load anyway."
        ),
    )
    num_cpus: float = Field(default=0.1, ge=0, description="CPUs of the gateway deployment.")

    @field_validator("database")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(DATABASE_SCHEMES):
            raise ValueError(
                f"database {value!r}: use sqlite:///PATH (e.g. sqlite:///~/.cache/llmaas/gateway.db) "
                "or postgresql://USER:PASSWORD@HOST:PORT/DB"
            )
        return value
