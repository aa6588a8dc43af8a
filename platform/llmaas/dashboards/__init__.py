"""Grafana dashboards for llmaas's Prometheus metrics (package data).

``llmaas.json``: request rate by model and status, tokens per second in and out, TTFT / TPOT /
end-to-end latency quantiles, running and waiting sequences, batch and KV-cache occupancy,
and replicas per model (Ray Serve's own series). Import it in Grafana (Dashboards > Import)
or provision it; it asks for a Prometheus data source that scrapes the Ray nodes.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importlib.resources.abc is Python 3.11+
    from importlib.resources.abc import Traversable

DASHBOARD_FILE = "llmaas.json"


def dashboard_path() -> Traversable:
    """The dashboard JSON inside the installed package (``str()`` of it is a file path)."""
    return resources.files("llmaas.dashboards").joinpath(DASHBOARD_FILE)


def dashboard_json() -> str:
    return dashboard_path().read_text(encoding="utf-8")


__all__ = ["DASHBOARD_FILE", "dashboard_json", "dashboard_path"]
