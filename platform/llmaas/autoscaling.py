"""Autoscaling on sequences: a Ray Serve custom policy for continuously batched LLM replicas.

Each generating replica reports, through Serve's ``record_autoscaling_stats`` hook, the
sequences its batching scheduler holds: running (in the batch, holding KV cache) plus
waiting (admitted to the engine, held back for a batch slot or for KV cache). The policy
sizes the deployment so that each replica holds ``target_ongoing_requests`` of them: that
field of the deployment's autoscaling config carries the target number of *sequences* per
replica (e.g. 0.8 x ``max_batch_size``).

Why not Serve's default (``replica_queue_length_autoscaling_policy``: ceil of
``total_num_requests`` over ``target_ongoing_requests``)? Its input is the number of handle
calls to the model deployment, counted by the calling handles
(``RAY_SERVE_COLLECT_AUTOSCALING_METRICS_ON_HANDLE`` is on by default) from assignment until
the replica's response generator completes, plus the calls queued at the handles. llmaas
makes one ``generate`` call per sequence (``n`` choices are ``n`` calls), so in steady state
that is close to the scheduler's count; but it is not what fills a replica:

- a replica's capacity is its batch (``max_batch_size``) and its KV cache, not a number of
  calls: up to ``max_ongoing_requests`` (2 x ``max_batch_size`` by default) calls are equally
  "ongoing" at a replica whether their sequences decode or wait in its scheduler for a
  batch slot or KV cache. The scheduler's count is the one measured against those limits,
  per replica, and its waiting part is the saturation signal;
- it also counts calls that hold no batch slot: ``info`` calls, the time before the engine
  admits a sequence and after it has left the batch (the generator winding down, a
  disconnected client's cancellation on its way).

Requests that no replica has accepted yet (all of them at ``max_ongoing_requests``, or none
running) wait at the handles; Serve reports them as ``total_queued_requests`` and the policy
adds them to the replicas' sequences: the two sets are disjoint.

What the policy adds to that count: a dead band (``DOWNSCALE_BAND``): it asks for fewer
replicas only when the load would run them at most 90% of the target, so a load that wobbles
around a multiple of the target cannot flip between two counts; and it never asks for fewer
than the replicas' *latest* samples need, since the window mean lags a rise.

What stays Serve's (``ray.serve.autoscaling_policy._apply_autoscaling_config``, which the
controller wraps around *every* custom policy, ``_private/autoscaling_state.py``
``DeploymentAutoscalingState.register``):

- hysteresis: a new count is applied only once the policy has wanted more (fewer) replicas
  than the current target on every decision for ``upscale_delay_s`` (``downscale_delay_s``);
  the first such decision's wall-clock time lives in ``policy_state`` and is reset whenever
  the wish changes direction or matches the target, so a short spike or dip changes nothing;
- scale to zero only as 1 -> 0, after ``downscale_to_zero_delay_s`` (default
  ``downscale_delay_s``);
- scale from zero: with no running replica and any request counted (a request waiting at a
  handle is pushed to the controller at once), the wrapper asks for one replica *without*
  calling the policy;
- ``upscaling_factor`` / ``downscaling_factor``, then the min/max bounds.

NOTE: the policy therefore keeps no timer of its own: one would stack on Serve's (twice the
delay), and Serve's resets whenever a held-back wish equals the target, so a policy that
returned the current count while "waiting" would never scale at all.

The policy function is cloudpickled *by value* where the deployment is defined, and runs
in the Serve controller: it may use only this module and the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from llmaas.engine.types import EngineHealth

if TYPE_CHECKING:
    from ray.serve.config import AutoscalingContext

#: The custom metric each generating replica reports: running + waiting sequences.
SEQUENCES_METRIC = "llmaas_sequences"

#: Scale down only to a count that runs at most this share of the target: a dead band, so a
#: load that wobbles around a multiple of the target does not flip between two counts.
DOWNSCALE_BAND = 0.9

_EPS = 1e-9  # 2.0000000001 target-loads is 2 replicas, not 3


def autoscaling_stats(health: EngineHealth) -> dict[str, float]:
    """What a generating replica's ``record_autoscaling_stats`` returns.

    Empty while the engine is unhealthy: no sample beats a false zero (the policy then
    falls back to Serve's request counts for that replica).
    """
    if not health.healthy:
        return {}
    return {SEQUENCES_METRIC: float(health.running + health.waiting)}


def sequence_autoscaling_policy(ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
    """Serve custom policy: replicas = ceil((replica sequences + handle-queued requests) / target).

    ``target`` is ``ctx.config.target_ongoing_requests`` (sequences per replica). The
    sequences are the per-replica means over ``look_back_period_s`` that Serve aggregates
    from ``record_autoscaling_stats``. Below the current target the wish is the count that
    would run at ``DOWNSCALE_BAND`` x target, and no lower than the latest samples need.
    Returns the wish, clamped to the capacity-adjusted bounds, and no state of its own:
    Serve's wrapper applies the delays (module docstring).
    """
    low, high = ctx.capacity_adjusted_min_replicas, ctx.capacity_adjusted_max_replicas
    queued = float(ctx.total_queued_requests or 0.0)
    if ctx.current_num_replicas == 0:
        # NOTE: Serve's wrapper answers "0 running and requests counted" before calling this;
        # here too (direct calls) any request gives one replica, and replicas still starting
        # keep their target, as in Serve's default policy.
        wanted = 1 if queued > 0 or ctx.total_num_requests > 0 else 0
        return _clamp(max(wanted, ctx.target_num_replicas), low, high), {}

    if ctx.config is None:  # NOTE: Serve always passes the deployment's AutoscalingConfig
        return _clamp(ctx.target_num_replicas, low, high), {}
    target = float(ctx.config.get_target_ongoing_requests())
    load = _load(ctx, queued)
    current = ctx.target_num_replicas
    desired = _replicas_for(load, target)
    if desired <= current:
        # NOTE: down only past the band (else hold, which also resets Serve's delay timer), and
        # never below what the latest samples need: the window mean lags a rise.
        latest = _latest_sequences(ctx.raw_metrics) + queued
        desired = max(_replicas_for(load, target * DOWNSCALE_BAND), _replicas_for(latest, target))
        desired = min(desired, current)
    return _clamp(desired, low, high), {}


def policy_config() -> dict[str, str]:
    """What goes under ``autoscaling_config["policy"]`` of a model deployment."""
    fn = sequence_autoscaling_policy
    return {"policy_function": f"{fn.__module__}:{fn.__qualname__}"}


def _load(ctx: AutoscalingContext, queued: float) -> float:
    """Sequences in the running replicas plus requests waiting at handles.

    A running replica without the metric (started but not reported yet, or a replica that
    has no scheduler) is covered by Serve's own count, ``total_num_requests`` (requests at
    replicas plus queued at handles): the load is then never below it.
    """
    per_replica = (ctx.aggregated_metrics or {}).get(SEQUENCES_METRIC, {})
    reported = [per_replica[r] for r in ctx.running_replicas if r in per_replica]
    load = sum(reported) + queued
    if len(reported) < len(ctx.running_replicas):
        load = max(load, float(ctx.total_num_requests))
    return load


def _latest_sequences(raw: Mapping[str, Mapping[Any, Any]] | None) -> float:
    """The sum of each replica's most recent sample (a TimeSeries sorted by time)."""
    series = (raw or {}).get(SEQUENCES_METRIC, {})
    return sum(float(points[-1].value) for points in series.values() if points)


def _replicas_for(load: float, target: float) -> int:
    return max(0, math.ceil(load / target - _EPS))


def _clamp(n: int, low: int, high: int) -> int:
    return max(low, min(high, n))
