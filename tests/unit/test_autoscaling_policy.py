"""The sequence autoscaling policy, on real ``AutoscalingContext`` objects (no Ray cluster).

Most tests run the policy the way the Serve controller does: wrapped by
``_apply_autoscaling_config`` (delays, scaling factors, scale from zero) and then clamped
to the bounds, once per simulated second. Serve's delay logic reads ``time.time()`` in
``ray.serve.autoscaling_policy`` (the wrapper passes no clock), so the simulation points
that module's ``time`` at its own clock, and sets ``current_time`` from the same clock.
"""

from __future__ import annotations

import random
import sys
from types import SimpleNamespace
from typing import Any

import pytest
import ray.serve.autoscaling_policy as serve_policy
from ray import cloudpickle
from ray.serve._private.common import DeploymentID, ReplicaID, TimeStampedValue
from ray.serve.autoscaling_policy import _apply_autoscaling_config
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from llmaas.autoscaling import (
    SEQUENCES_METRIC,
    autoscaling_stats,
    policy_config,
    sequence_autoscaling_policy,
)
from llmaas.engine.types import EngineHealth

DEPLOYMENT = DeploymentID(name="model-m", app_name="llmaas")
TARGET = 8.0  # sequences per replica (target_ongoing_requests)


def _config(**fields: Any) -> AutoscalingConfig:
    values: dict[str, Any] = {
        "min_replicas": 1,
        "max_replicas": 10,
        "target_ongoing_requests": TARGET,
        "upscale_delay_s": 10.0,
        "downscale_delay_s": 60.0,
        "policy": policy_config(),
        **fields,
    }
    return AutoscalingConfig(**values)


def _replicas(n: int) -> list[ReplicaID]:
    return [ReplicaID(unique_id=f"r{i}", deployment_id=DEPLOYMENT) for i in range(n)]


def _context(
    config: AutoscalingConfig,
    *,
    replicas: int,
    sequences: list[float] | None,
    latest: list[float] | None = None,
    requests: float = 0.0,
    queued: float = 0.0,
    target_replicas: int | None = None,
    state: dict[str, Any] | None = None,
    now: float = 1000.0,
) -> AutoscalingContext:
    """``sequences``: each running replica's mean (None: no replica has reported)."""
    running = _replicas(replicas)
    aggregated: dict[str, dict[ReplicaID, float]] = {}
    raw: dict[str, dict[ReplicaID, list[TimeStampedValue]]] = {}
    if sequences is not None:
        aggregated[SEQUENCES_METRIC] = dict(zip(running, sequences, strict=False))
        raw[SEQUENCES_METRIC] = {
            r: [TimeStampedValue(now - 1.0, v)]
            for r, v in zip(running, latest if latest is not None else sequences, strict=False)
        }
    return AutoscalingContext(
        deployment_id=DEPLOYMENT,
        deployment_name=DEPLOYMENT.name,
        app_name=DEPLOYMENT.app_name,
        current_num_replicas=replicas,
        target_num_replicas=replicas if target_replicas is None else target_replicas,
        running_replicas=running,
        total_num_requests=requests,
        total_queued_requests=queued,
        aggregated_metrics=aggregated,
        raw_metrics=raw,
        capacity_adjusted_min_replicas=config.min_replicas,
        capacity_adjusted_max_replicas=config.max_replicas,
        policy_state=state if state is not None else {},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=now,
        config=config,
    )


class Controller:
    """One deployment under Serve's decision loop: wrapped policy, then bounds; replicas start at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, config: AutoscalingConfig, replicas: int) -> None:
        self.config = config
        self.replicas = replicas
        self.now = 1000.0
        self.state: dict[str, Any] = {}
        self.changes: list[tuple[float, int]] = []  # (time, new count)
        self.policy = _apply_autoscaling_config(config.policy.get_policy())
        self._monkeypatch = monkeypatch
        self._clock = SimpleNamespace(time=lambda: self.now)

    def tick(self, sequences: float, *, queued: float = 0.0, dt: float = 1.0) -> int:
        """One decision ``dt`` after the last; ``sequences`` in total, spread evenly over the replicas."""
        self.now += dt
        self._monkeypatch.setattr(serve_policy, "time", self._clock)  # this controller's clock
        n = self.replicas
        ctx = _context(
            self.config,
            replicas=n,
            sequences=[sequences / n] * n if n else None,
            requests=sequences + queued,
            queued=queued,
            state=self.state,
            now=self.now,
        )
        decision, self.state = self.policy(ctx)
        decision = max(self.config.min_replicas, min(self.config.max_replicas, decision))
        if decision != self.replicas:
            self.changes.append((self.now, decision))
            self.replicas = decision
        return decision

    def run(self, seconds: int, load: float, *, queued: float = 0.0) -> None:
        for _ in range(seconds):
            self.tick(load, queued=queued)


# ---- the replica's report ------------------------------------------------------------------------


def test_stats_are_running_plus_waiting_sequences():
    health = EngineHealth(healthy=True, running=12, waiting=5, kv_capacity_tokens=100, kv_used_tokens=90)
    assert autoscaling_stats(health) == {SEQUENCES_METRIC: 17.0}


def test_an_unhealthy_engine_reports_nothing_rather_than_zero():
    assert autoscaling_stats(EngineHealth(healthy=False, detail="loading", running=3)) == {}


# ---- Serve accepts the policy --------------------------------------------------------------------


def test_policy_config_is_an_import_path_serve_accepts():
    config = _config()
    assert policy_config() == {"policy_function": "llmaas.autoscaling:sequence_autoscaling_policy"}
    assert not config.policy.is_default_policy_function()
    assert config.policy.get_policy()(_context(config, replicas=1, sequences=[20.0])) == (3, {})


def test_serialized_policy_runs_where_llmaas_cannot_be_imported(monkeypatch):
    """The controller unpickles the function by value: it must not need llmaas installed."""
    config = _config()
    ctx = _context(config, replicas=2, sequences=[8.0, 9.0])
    blob = config.policy.get_serialized_policy_def()
    assert blob
    for name in [m for m in sys.modules if m == "llmaas" or m.startswith("llmaas.")]:
        monkeypatch.setitem(sys.modules, name, None)  # import llmaas... now raises ImportError
    policy = cloudpickle.loads(blob)
    assert policy(ctx)[0] == 3


# ---- the signal ----------------------------------------------------------------------------------


def test_sequences_not_requests_size_the_deployment():
    """Streams still draining count as requests at the handles, not as sequences in the batch."""
    ctx = _context(_config(), replicas=2, sequences=[6.0, 7.0], requests=40.0)
    assert sequence_autoscaling_policy(ctx) == (2, {})


def test_requests_queued_at_handles_add_to_the_sequences():
    ctx = _context(_config(), replicas=1, sequences=[8.0], requests=20.0, queued=12.0)
    assert sequence_autoscaling_policy(ctx)[0] == 3  # ceil((8 + 12) / 8)


def test_without_the_metric_the_policy_falls_back_to_request_counts():
    config = _config()
    assert sequence_autoscaling_policy(_context(config, replicas=2, sequences=None, requests=30.0))[0] == 4


def test_a_replica_that_has_not_reported_yet_is_covered_by_request_counts():
    # r1 (new) has no sample yet: Serve's count (30 requests) covers it.
    ctx = _context(_config(), replicas=2, sequences=[6.0], requests=30.0)
    assert sequence_autoscaling_policy(ctx)[0] == 4


def test_min_and_max_bound_the_wish():
    config = _config(min_replicas=2, max_replicas=4)
    assert sequence_autoscaling_policy(_context(config, replicas=3, sequences=[80.0] * 3))[0] == 4
    assert sequence_autoscaling_policy(_context(config, replicas=3, sequences=[0.0] * 3))[0] == 2


def test_scale_down_never_below_what_the_latest_samples_need():
    # The 30 s mean says 1 replica; the last samples hold 30 sequences: keep 4.
    ctx = _context(_config(), replicas=5, sequences=[1.0] * 5, latest=[6.0] * 5)
    assert sequence_autoscaling_policy(ctx)[0] == 4


# ---- scale from and to zero ----------------------------------------------------------------------


def test_a_request_queued_at_zero_replicas_asks_for_one():
    config = _config(min_replicas=0)
    idle = _context(config, replicas=0, sequences=None, target_replicas=0)
    queued = _context(config, replicas=0, sequences=None, requests=1.0, queued=1.0, target_replicas=0)
    assert sequence_autoscaling_policy(idle)[0] == 0
    assert sequence_autoscaling_policy(queued)[0] == 1
    # What the controller runs: Serve's wrapper answers at once, with no upscale delay.
    assert _apply_autoscaling_config(sequence_autoscaling_policy)(queued)[0] == 1


def test_idle_deployment_goes_to_zero_only_after_the_delay(monkeypatch):
    controller = Controller(monkeypatch, _config(min_replicas=0, downscale_delay_s=60.0), replicas=1)
    controller.run(60, load=0.0)  # wanted 0 from the first decision (t=1001) on
    assert controller.replicas == 1
    controller.run(1, load=0.0)
    assert controller.changes == [(1061.0, 0)]
    controller.tick(0.0, queued=1.0)
    assert controller.replicas == 1


# ---- hysteresis (Serve's delays around the policy) ----------------------------------------------


def test_steady_load_at_target_changes_nothing(monkeypatch):
    controller = Controller(monkeypatch, _config(), replicas=3)
    controller.run(600, load=3 * TARGET)
    controller.run(600, load=3 * TARGET * 0.9)
    assert controller.changes == []


def test_a_load_step_scales_up_after_the_upscale_delay_and_not_before(monkeypatch):
    controller = Controller(monkeypatch, _config(upscale_delay_s=10.0), replicas=2)
    controller.run(30, load=2 * TARGET)
    step_at = controller.now + 1.0
    controller.run(10, load=4.5 * TARGET)
    assert controller.replicas == 2  # wanted 5 for 9 s
    controller.run(1, load=4.5 * TARGET)
    assert controller.changes == [(step_at + 10.0, 5)]  # ceil(36 / 8)


def test_load_falls_scale_down_after_the_downscale_delay_once(monkeypatch):
    controller = Controller(monkeypatch, _config(downscale_delay_s=60.0), replicas=5)
    controller.run(30, load=5 * TARGET)
    drop_at = controller.now + 1.0
    controller.run(60, load=1.5 * TARGET)
    assert controller.replicas == 5  # wanted 2 for 59 s
    controller.run(600, load=1.5 * TARGET)
    assert controller.changes == [(drop_at + 60.0, 2)]


def test_a_short_dip_does_not_scale_down(monkeypatch):
    controller = Controller(monkeypatch, _config(downscale_delay_s=60.0), replicas=4)
    for _ in range(5):
        controller.run(50, load=1.0 * TARGET)
        controller.run(1, load=4.0 * TARGET)
    assert controller.changes == []


def test_a_signal_wobbling_around_a_boundary_does_not_oscillate(monkeypatch):
    """A load that wanders +-10% around 2 x target, decided every second for 20 minutes.

    Sitting at 2 replicas, it may go to 3 once (it is above target half the time), never
    back; coming down from 6, it steps down once, to 3 (the dead band), and stays.
    """
    config = _config(upscale_delay_s=10.0, downscale_delay_s=60.0)
    for seed in range(5):
        rng = random.Random(seed)
        at_two = Controller(monkeypatch, config, replicas=2)
        from_six = Controller(monkeypatch, config, replicas=6)
        for _ in range(1200):
            at_two.tick(2.0 * TARGET * (1.0 + rng.uniform(-0.1, 0.1)))
        for _ in range(1200):
            from_six.tick(2.0 * TARGET * (1.0 + rng.uniform(-0.1, 0.1)))
        assert [n for _, n in at_two.changes] in ([], [3]), seed
        assert from_six.changes == [(1061.0, 3)], seed


def test_max_bounds_a_big_step(monkeypatch):
    controller = Controller(monkeypatch, _config(max_replicas=4, upscale_delay_s=0.0), replicas=1)
    controller.run(3, load=100 * TARGET)
    assert controller.changes == [(1001.0, 4)]
