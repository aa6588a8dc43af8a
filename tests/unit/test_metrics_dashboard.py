"""The Grafana dashboard: valid JSON of Grafana's shape, using only series that exist."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from llmaas.dashboards import dashboard_json, dashboard_path
from llmaas.metrics import METRICS, RAY_SERVE_SERIES, prometheus_series

# PromQL functions, keywords and Grafana macros that look like names in an expression.
_NOT_SERIES = {
    "sum", "avg", "max", "min", "by", "without", "rate", "histogram_quantile", "label_replace",
    "le", "model", "status", "deployment",
}  # fmt: skip
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _dashboard() -> dict[str, Any]:
    data = json.loads(dashboard_json())
    assert isinstance(data, dict)
    return data


def _targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]


def _series(expr: str) -> set[str]:
    """Names a PromQL expression selects: identifiers followed by ``{``, ``[`` or ``)``,
    with quoted strings (label values, regexes) and Grafana variables removed."""
    bare = re.sub(r'"[^"]*"', '""', expr)
    bare = re.sub(r"\$\w+", "", bare)
    return {m.group(0) for m in _NAME.finditer(bare) if bare[m.end() : m.end() + 1] in "{[)"} - _NOT_SERIES


def test_dashboard_is_packaged():
    assert dashboard_path().name == "llmaas.json"
    assert dashboard_path().is_file()


def test_dashboard_has_grafanas_shape():
    dashboard = _dashboard()
    for key in ("title", "uid", "panels", "schemaVersion", "templating", "time"):
        assert key in dashboard, key
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "model" in variables
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"}
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24
        assert panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["type"] == "timeseries"
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert target["expr"].count("{") == target["expr"].count("}"), target["expr"]


def test_dashboard_uses_only_defined_series_and_shows_every_metric():
    dashboard = _dashboard()
    known = prometheus_series() | set(RAY_SERVE_SERIES)
    used: set[str] = set()
    for target in _targets(dashboard):
        names = _series(target["expr"])
        assert names, f"no series found in {target['expr']!r}"
        assert names <= known, f"unknown series {names - known} in {target['expr']!r}"
        used |= names
    for metric in METRICS:
        assert used & set(metric.prometheus_series()), f"{metric.name} is on no panel"
    for name in used:
        if name.endswith("_bucket"):
            assert any(
                f"histogram_quantile({q}" in t["expr"] and name in t["expr"]
                for t in _targets(dashboard)
                for q in ("0.5", "0.99")
            )


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (model) (rate(ray_a_total{model=~"$model"}[$__rate_interval]))', {"ray_a_total"}),
        ('histogram_quantile(0.5, sum by (le) (rate(ray_b_bucket{x="y(z)"}[5m])))', {"ray_b_bucket"}),
        ("max by (model) (ray_gauge)", {"ray_gauge"}),
    ],
)
def test_series_extraction(expr: str, names: set[str]):
    assert _series(expr) == names
