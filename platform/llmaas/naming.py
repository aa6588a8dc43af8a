"""Names of the platform's Serve deployments and applications: defined here, once.

A catalog ``app_name: llmaas`` runs as
- ``llmaas``: the front application (deployments ``router``, ``tokenizer``, ``gateway``, ``catalog-admin``,
  ``fine-tuning``);
- ``llmaas-model-<id>``: one application per model (deployment ``model-<id>``);
- ``llmaas-pool-<name>``: one application per multiplexed pool (deployment ``pool-<name>``).

``<id>`` is the model id with every character Serve does not allow in a name flattened to ``_``.
"""

from __future__ import annotations

import re
from typing import Final

ROUTER: Final = "router"
TOKENIZER: Final = "tokenizer"
GATEWAY: Final = "gateway"
CATALOG_ADMIN: Final = "catalog-admin"
FINE_TUNING: Final = "fine-tuning"

_MODEL_PREFIX = "model-"
_POOL_PREFIX = "pool-"


def deployment_name(model_id: str) -> str:
    """The Serve deployment name of a model: ``model-`` + the id with separators flattened."""
    return _MODEL_PREFIX + re.sub(r"[^A-Za-z0-9_-]", "_", model_id)


def pool_deployment_name(pool: str) -> str:
    """The Serve deployment name of a multiplexed pool."""
    return f"{_POOL_PREFIX}{pool}"


def model_app_name(app_name: str, model_id: str) -> str:
    """The Serve application that runs one model of the platform ``app_name``."""
    return f"{app_name}-{deployment_name(model_id)}"


def pool_app_name(app_name: str, pool: str) -> str:
    """The Serve application that runs one multiplexed pool of the platform ``app_name``."""
    return f"{app_name}-{pool_deployment_name(pool)}"


def is_model_app(app_name: str, name: str) -> bool:
    """Whether the Serve application ``name`` runs a model (or a pool) of the platform ``app_name``."""
    return name.startswith((f"{app_name}-{_MODEL_PREFIX}", f"{app_name}-{_POOL_PREFIX}"))


def is_model_deployment(name: str) -> bool:
    """Whether a deployment name is a model's or a pool's (what serves requests with weights)."""
    return name.startswith((_MODEL_PREFIX, _POOL_PREFIX))


__all__ = [
    "CATALOG_ADMIN",
    "FINE_TUNING",
    "GATEWAY",
    "ROUTER",
    "TOKENIZER",
    "deployment_name",
    "is_model_app",
    "is_model_deployment",
    "model_app_name",
    "pool_app_name",
    "pool_deployment_name",
]
