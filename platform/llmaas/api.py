"""llmaas as a library: the flat API below the ``llmaas`` command line.

The CLI parses arguments, calls these and prints; notebooks, benchmarks and Ray jobs call
them directly. Nothing here prints: a catalog or cluster file that cannot be used raises
``CatalogError``, whose text names every problem and its fix (the CLI prints it after
``error:``). ``prepare`` shows build progress (a tqdm bar on a terminal) unless told not to.

    from llmaas.api import fit_to_cluster, load_catalog, prepare
    from llmaas.launch import start_platform

    catalog = fit_to_cluster(load_catalog("models.yaml"), "cluster.yaml")
    prepare(catalog)
    url = start_platform(catalog)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import ValidationError

from llmaas.config.catalog import Catalog

if TYPE_CHECKING:
    from llmaas.capacity import ClusterSpec, TrainingCapacity

#: Where ``ray up`` leaves cluster.yaml on the head node: the default cluster file to fit.
BOOTSTRAP_CLUSTER = "~/ray_bootstrap_config.yaml"


class CatalogError(ValueError):
    """A catalog (or the cluster file it must fit) that cannot be used.

    ``heading`` says what failed; ``problems`` name each field and its fix, one a line.
    """

    def __init__(self, heading: str, problems: Sequence[str] = ()) -> None:
        self.heading = heading
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n  - ".join([self.heading, *self.problems])


def load_catalog(path: str | None = None) -> Catalog:
    """The catalog at ``path`` (a YAML file or an embedded name such as ``bench``; None: the embedded
    default), validated and preflight-checked.

    Raises ``CatalogError`` naming every problem when it is unusable.
    """
    from llmaas.catalogs import default_catalog, embedded_catalog_path
    from llmaas.config.base import describe_errors
    from llmaas.preflight import check_catalog

    if path and not Path(path).exists() and (embedded := embedded_catalog_path(path)):
        path = str(embedded)
    try:
        catalog = Catalog.from_file(path) if path else default_catalog()
    except ValidationError as exc:  # NOTE: before ValueError, which it is too
        raise CatalogError(
            f"catalog {path or '(embedded default)'} is invalid:", describe_errors(exc, Catalog)
        ) from exc
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc}") from exc
    problems = check_catalog(catalog)
    if problems:
        raise CatalogError("the catalog cannot be deployed:", problems)
    return catalog


def fit_to_cluster(catalog: Catalog, cluster_file: str | None = None) -> Catalog:
    """``catalog`` checked against a Ray cluster launcher file, with max replicas from its capacity.

    Without ``cluster_file``, the head's ``~/ray_bootstrap_config.yaml`` where there is one, else
    no check (a local Ray): ``catalog`` comes back as it is. Raises ``CatalogError`` naming every
    problem when the file is unreadable or the catalog cannot fit.
    """
    from llmaas.capacity import check_capacity, check_training, with_capacity_defaults

    found = _cluster(cluster_file)
    if found is None:
        return catalog
    path, cluster = found
    problems = check_capacity(catalog, cluster)
    training = check_training(catalog, cluster)
    problems += training.problems if training is not None else []
    if problems:
        raise CatalogError(f"the catalog does not fit the cluster in {path}:", problems)
    return with_capacity_defaults(catalog, cluster)


def training_capacity(catalog: Catalog, cluster_file: str | None = None) -> TrainingCapacity | None:
    """The catalog's fine-tuning jobs beside its serving replicas at their maximum (pass the catalog
    ``fit_to_cluster`` returned); None without a fine_tuning section or a cluster file."""
    from llmaas.capacity import check_training

    found = _cluster(cluster_file) if catalog.fine_tuning is not None else None
    return check_training(catalog, found[1]) if found is not None else None


def _cluster(cluster_file: str | None) -> tuple[Path, ClusterSpec] | None:
    """The cluster file (``cluster_file``, else the head's bootstrap file if any) read; a
    ``CatalogError`` when it is unreadable."""
    from llmaas.capacity import ClusterSpec

    path = Path(cluster_file or BOOTSTRAP_CLUSTER).expanduser()
    if cluster_file is None and not path.exists():
        return None
    try:
        return path, ClusterSpec.from_file(path)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise CatalogError(f"cannot read the cluster config {path}: {exc}") from exc


def prepare(
    catalog: Catalog,
    *,
    progress: bool = True,
    on_ready: Callable[[str, Path], None] | None = None,
) -> dict[str, Path]:
    """Every model's directory by model id, building demo models that are not built yet.

    ``progress`` shows each build (a tqdm bar on a terminal, a few log lines elsewhere);
    ``on_ready(model_id, path)`` is called as each model's directory is known.
    """
    from llmaas.models import is_prepared, resolve_model_path
    from llmaas.progress import ProgressBar

    paths: dict[str, Path] = {}
    for spec in catalog.models:
        if spec.adapter_of is not None:  # NOTE: an adapter directory is used as it is, on its base
            continue
        if progress and not is_prepared(spec.source, catalog.cache_path):
            bar = ProgressBar(f"building {spec.id}")
            try:
                paths[spec.id] = resolve_model_path(spec.source, catalog.cache_path, bar)
            finally:
                bar.close()
        else:
            paths[spec.id] = resolve_model_path(spec.source, catalog.cache_path)
        if on_ready is not None:
            on_ready(spec.id, paths[spec.id])
    return paths


__all__ = ["BOOTSTRAP_CLUSTER", "CatalogError", "fit_to_cluster", "load_catalog", "prepare"]
