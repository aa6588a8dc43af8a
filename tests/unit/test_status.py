"""``llmaas status``: Serve's view turned into rows, and the table an operator reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from llmaas.engine.types import EngineHealth
from llmaas.status import AppStatus, DeploymentRow, render, rows_from_serve


class State(str, Enum):  # stands in for Serve's enums
    RUNNING = "RUNNING"
    STARTING = "STARTING"
    HEALTHY = "HEALTHY"
    UPDATING = "UPDATING"


@dataclass
class Dep:
    status: State
    replica_states: dict[State, int]
    message: str = ""


@dataclass
class App:
    status: State
    deployments: dict[str, Dep] = field(default_factory=dict)
    message: str = ""


def test_rows_list_models_first_with_replica_states():
    overview = App(
        State.RUNNING,
        {
            "router": Dep(State.HEALTHY, {State.RUNNING: 1}),
            "model-b": Dep(State.UPDATING, {State.RUNNING: 1, State.STARTING: 2}, "scaling up"),
            "model-a": Dep(State.HEALTHY, {State.RUNNING: 2}),
        },
    )
    status = rows_from_serve("llmaas", overview)
    assert [r.name for r in status.deployments] == ["model-a", "model-b", "router"]
    assert status.deployments[1].replicas == {"RUNNING": 1, "STARTING": 2}
    assert [r.kind for r in status.deployments] == ["model", "model", "router"]
    assert status.status == "RUNNING"


def test_table_shows_load_and_spells_out_problems():
    status = AppStatus(
        app="llmaas",
        status="RUNNING",
        deployments=[
            DeploymentRow(
                name="model-a", kind="model", status="HEALTHY", replicas={"RUNNING": 1},
                health=EngineHealth(
                    healthy=True, running=3, waiting=2, kv_capacity_tokens=1000, kv_used_tokens=250
                ),
            ),
            DeploymentRow(
                name="model-b", kind="model", status="UPDATING", replicas={"RUNNING": 1, "STARTING": 1},
                message="scaling up", health_error="TimeoutError: no answer",
            ),
            DeploymentRow(name="router", kind="router", status="HEALTHY", replicas={"RUNNING": 1}),
        ],
    )  # fmt: skip
    table = render(status)
    lines = table.splitlines()
    assert lines[0] == "application llmaas: RUNNING"
    assert lines[1].split() == ["DEPLOYMENT", "STATUS", "REPLICAS", "RUNNING", "WAITING", "KV", "ENGINE"]
    assert lines[2].split() == ["model-a", "HEALTHY", "1", "running", "3", "2", "25%", "ok"]
    assert "1 running (1 starting)" in lines[3] and "unreachable" in lines[3]
    assert lines[4].split() == ["router", "HEALTHY", "1", "running"]
    assert "problems:" in lines and "  model-b: scaling up" in lines


def test_a_healthy_app_prints_no_problem_section():
    status = AppStatus(
        app="x",
        status="RUNNING",
        deployments=[DeploymentRow(name="router", kind="router", status="HEALTHY", replicas={"RUNNING": 1})],
    )
    assert "problems" not in render(status)
