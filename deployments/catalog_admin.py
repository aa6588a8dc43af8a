"""The catalog-admin deployment: the admin API's catalog changes, applied as ``llmaas deploy`` would.

The control plane, kept out of the data plane: a router replica hands a ``CatalogEdit`` here
(through a handle) instead of redeploying the cluster itself. One replica, in the platform's
front application; it changes the *deployed* catalog (what the last declarative deploy gave
Serve, not a router's copy), so that a change another caller made is kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from llmaas import deploy
from llmaas.catalog_edit import CatalogEdit
from llmaas.config.catalog import Catalog
from llmaas.deploy import CatalogChange
from llmaas.errors import CatalogNotDeclarative

ReadCatalog = Callable[[str], Catalog | None]
ApplyCatalog = Callable[[Catalog], CatalogChange]


class CatalogAdmin:
    """Applies one model's change at a time to the deployed catalog of the application ``app_name``.

    ``deployed_catalog`` and ``apply_catalog`` default to ``llmaas.deploy``'s (which need Ray and
    Serve); tests hand in fakes.
    """

    def __init__(
        self,
        app_name: str,
        *,
        deployed_catalog: ReadCatalog | None = None,
        apply_catalog: ApplyCatalog | None = None,
    ) -> None:
        self.app_name = app_name
        self._read = deployed_catalog
        self._apply = apply_catalog
        self._lock = asyncio.Lock()

    async def change(self, edit: CatalogEdit) -> CatalogChange:
        """Apply ``edit``; what changes (the controller took the config; replicas roll after).

        Raises ``CatalogNotDeclarative`` for an application not deployed declaratively, and
        ``CatalogEditError`` for an edit that leaves an invalid catalog.
        """
        read = self._read or deploy.deployed_catalog
        apply = self._apply or deploy.apply_catalog
        # NOTE: one change at a time: each reads the deployed catalog after the last one applied,
        # so two concurrent edits both land (neither overwrites the other with a stale base).
        async with self._lock:
            current = await asyncio.to_thread(read, self.app_name)
            if current is None:
                raise CatalogNotDeclarative(self.app_name)
            return await asyncio.to_thread(apply, edit.apply(current))
