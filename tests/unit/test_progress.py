"""Progress lines: replicas starting (``llmaas serve``) and model builds (``llmaas prepare``)."""

from __future__ import annotations

from llmaas.config.catalog import Catalog
from llmaas.launch import target_replicas
from llmaas.progress import ProgressBar, replica_progress

TARGETS = {"router": 1, "tokenizer": 1, "model-tiny-llama": 1, "model-big": 3}
LABELS = {"model-tiny-llama": "tiny-llama", "model-big": "big"}


def test_replicas_starting_name_the_deployments_behind():
    replicas = {
        "router": {"RUNNING": 1},
        "tokenizer": {"RUNNING": 1},
        "model-tiny-llama": {"STARTING": 1},
        "model-big": {"RUNNING": 1, "STARTING": 2},
    }
    running, target, message = replica_progress(replicas, TARGETS, LABELS)
    assert (running, target) == (3, 6)
    assert message == "replicas 3/6 running (tiny-llama: 0/1 starting, big: 1/3 starting)"


def test_deployments_serve_does_not_report_yet_are_pending():
    running, target, message = replica_progress({"router": {"STARTING": 1}}, TARGETS, LABELS)
    assert (running, target) == (0, 6)
    assert message == (
        "replicas 0/6 running (router: 0/1 starting, tokenizer: 0/1 pending, "
        "tiny-llama: 0/1 pending, big: 0/3 pending)"
    )


def test_all_running_lists_nothing_and_extra_replicas_do_not_count_past_target():
    replicas = {name: {"RUNNING": n} for name, n in TARGETS.items()}
    replicas["model-big"] = {"RUNNING": 3, "STOPPING": 1}
    replicas["router"] = {"RUNNING": 2}  # a rolling update's old and new replica
    assert replica_progress(replicas, TARGETS, LABELS) == (6, 6, "replicas 6/6 running")


def test_without_targets_the_reported_replicas_are_the_target():
    replicas = {"serve-batch": {"RUNNING": 1, "RECOVERING": 1, "STOPPING": 1}}
    assert replica_progress(replicas, {}) == (1, 2, "replicas 1/2 running (serve-batch: 1/2 recovering)")
    assert replica_progress({}, {}) == (0, 0, "replicas 0/0 running")


def test_targets_come_from_the_catalog():
    catalog = Catalog.from_yaml(
        """
models:
  - id: a/b.c
    source: {demo: tiny-gpt2}
    replicas: {num_replicas: 2}
  - id: auto
    source: {demo: tiny-gpt2}
    replicas: {autoscaling: {min_replicas: 1, max_replicas: 4, initial_replicas: 3}}
"""
    )
    assert target_replicas(catalog) == {
        "router": catalog.router.num_replicas,
        "tokenizer": catalog.tokenizer.num_replicas,
        "model-a_b_c": 2,
        "model-auto": 3,
        "catalog-admin": 1,
    }


def test_log_lines_per_change_without_a_terminal(capsys):
    progress = ProgressBar("llmaas", total=2, unit="replica", steps=None)
    for message, fraction in [("replicas 0/2 running", 0.0)] * 3 + [("replicas 2/2 running", 1.0)]:
        progress(message, fraction)
    progress.close()
    assert capsys.readouterr().out.splitlines() == [
        "  llmaas: replicas 0/2 running",
        "  llmaas: replicas 2/2 running",
    ]


def test_build_progress_logs_each_quarter(capsys):
    progress = ProgressBar("building tiny")
    for i in range(11):
        progress("training", i / 10)
    progress.close()
    assert capsys.readouterr().out.splitlines() == [
        "  building tiny:   0% training",
        "  building tiny:  30% training",
        "  building tiny:  50% training",
        "  building tiny:  80% training",
        "  building tiny: 100% training",
    ]
