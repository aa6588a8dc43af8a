"""Start and stop the platform from Python: Ray, Serve's HTTP proxy, and the catalog's application."""

from __future__ import annotations

import math
import os
import time

from llmaas.config.catalog import Catalog


def cpus_needed(catalog: Catalog) -> float:
    """Logical CPUs the catalog's replicas ask Ray for at their initial sizes."""
    total = catalog.router.num_cpus * catalog.router.num_replicas
    total += catalog.tokenizer.num_cpus * catalog.tokenizer.num_replicas
    for spec in catalog.models:
        replicas = spec.replicas.num_replicas or (
            spec.replicas.autoscaling.initial_replicas or spec.replicas.autoscaling.min_replicas
            if spec.replicas.autoscaling
            else 1
        )
        total += spec.resources.num_cpus * spec.tensor_parallel_size * replicas
    return total


def start_platform(
    catalog: Catalog,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    dashboard: bool = False,
    start_timeout_s: float = 900.0,
    extra_cpus: float = 0.0,
) -> str:
    """Deploy ``catalog`` (starting Ray unless ``address`` names a cluster); return the base URL."""
    import ray
    from ray import serve

    from llmaas.deployments.builder import build_from_catalog

    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # NOTE: Ray schedules by logical CPUs; on a small machine the default catalog's fractional
        # CPUs may add up past the cores, so declare at least what it needs.
        cpus = max(os.cpu_count() or 1, math.ceil(cpus_needed(catalog) + extra_cpus))
        ray.init(num_cpus=cpus, include_dashboard=dashboard, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    print("llmaas: starting replicas (router, tokenizer, models)")
    serve.run(build_from_catalog(catalog), name=catalog.app_name, route_prefix="/", blocking=False)
    wait_running(catalog.app_name, timeout_s=start_timeout_s)
    return f"http://{host}:{port}"


def stop_platform() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def wait_running(app_name: str, timeout_s: float) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app_name)
        state = str(status.status) if status else "NOT_STARTED"
        if state.endswith("RUNNING"):
            return
        if state.endswith("DEPLOY_FAILED"):
            raise SystemExit(f"llmaas: deployment of {app_name} failed: {status.message if status else ''}")
        if state != last:
            print(f"  application {app_name}: {state.split('.')[-1]}")
            last = state
        time.sleep(1)
    raise SystemExit(f"llmaas: the application {app_name} was not running after {timeout_s:.0f}s")
