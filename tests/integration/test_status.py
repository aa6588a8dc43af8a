"""``llmaas status`` against the running test app: in-process and as the CLI an operator runs."""

from __future__ import annotations

import subprocess
import sys

from llmaas.config.catalog import Catalog
from llmaas.naming import deployment_name
from llmaas.status import collect


def test_collect_reports_every_deployment_and_model_load(base_url: str, catalog: Catalog):
    status = collect(catalog.app_name)
    assert status is not None and status.status == "RUNNING"
    rows = {row.name: row for row in status.deployments}
    assert {"router", "tokenizer", *(deployment_name(m.id) for m in catalog.models)} <= set(rows)
    tiny = rows[deployment_name("tiny-llama")]
    assert tiny.running_replicas == 1 and tiny.health is not None and tiny.health.healthy
    assert tiny.health.kv_capacity_tokens > 0


def test_cli_prints_the_table_and_exits_zero_when_healthy(base_url: str, ray_cluster: dict[str, str]):
    done = subprocess.run(
        [sys.executable, "-m", "llmaas.cli", "status", "--address", ray_cluster["address"]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "application llmaas: RUNNING"
    assert any(line.split()[:2] == [deployment_name("tiny-llama"), "HEALTHY"] for line in lines[2:])


def test_cli_names_a_missing_application(base_url: str, ray_cluster: dict[str, str]):
    done = subprocess.run(
        [sys.executable, "-m", "llmaas.cli", "status", "--address", ray_cluster["address"], "--app", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "no application 'nope'" in done.stderr
