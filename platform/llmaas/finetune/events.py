"""A training run's event log: one small Ray actor between the job manager and the run.

Why an actor, and not ``ray.train.report`` alone: in Ray Train 2.x, metrics reported by workers
reach the Train controller's callbacks and are kept only with checkpoints; nothing streams them to
the process that called ``fit()`` while it runs. The log actor gets events as they happen (world
rank 0 puts step metrics; the controller's ``UserCallback`` puts checkpoints, as Ray Train
persisted them, and worker failures), the job manager reads them by index at its own pace, and the
cancel flag travels the other way (workers check it after each step).
"""

from __future__ import annotations

import math
from typing import Any

import ray
from ray.train import Checkpoint, UserCallback

# NOTE: RunConfig(callbacks=...) takes Ray Train's internal callbacks too ("custom workarounds built
# on top of internal callbacks", its source says); this one is how a cancel reaches the controller.
from ray.train.v2._internal.execution.callback import ControllerCallback

from llmaas.finetune.spec import CheckpointInfo, TrainingEvent

__all__ = ["ControllerEvents", "ControllerHandle", "EventLog", "checkpoint_metrics", "remote_event_log"]

#: The folder inside a Ray checkpoint that holds the Trainer's own (RayTrainReportCallback's layout).
HF_CHECKPOINT = "checkpoint"
_METRIC_NAMES = {
    "step": "step",
    "epoch": "epoch",
    "loss": "train_loss",
    "eval_loss": "valid_loss",
    "eval_accuracy": "accuracy",
    "train_loss": "train_loss",
    "valid_loss": "valid_loss",
    "accuracy": "accuracy",
    "trained_tokens": "trained_tokens",
}


def checkpoint_metrics(raw: dict[str, Any]) -> dict[str, float]:
    """The numbers a checkpoint shows (OpenAI's names), from what the Trainer logged."""
    out: dict[str, float] = {}
    for key, name in _METRIC_NAMES.items():
        value = raw.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


class EventLog:
    """Events in order, the cancel flag, worker failures, the last checkpoint (a Ray actor, no CPU)."""

    def __init__(self) -> None:
        self._events: list[TrainingEvent] = []
        self._cancelled = False
        self._failures = 0
        self._checkpoint: CheckpointInfo | None = None
        self._controller: Any = None

    def put(self, event: TrainingEvent) -> None:
        self._events.append(event)
        if event.checkpoint is not None:
            self._checkpoint = event.checkpoint

    def last_checkpoint(self) -> CheckpointInfo | None:
        return self._checkpoint

    def since(self, index: int) -> list[TrainingEvent]:
        return self._events[index:]

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled

    def failed(self, event: TrainingEvent) -> None:
        self._failures += 1
        self._events.append(event)

    def failures(self) -> int:
        return self._failures

    def set_controller(self, controller: Any) -> None:
        self._controller = controller

    def controller(self) -> Any:
        """The run's Ray Train controller (an actor handle), once it has started."""
        return self._controller


class ControllerEvents(UserCallback):
    """Runs in Ray Train's controller: persisted checkpoints and worker failures to the log."""

    def __init__(self, log: Any, max_failures: int) -> None:
        self.log = log
        self.max_failures = max_failures
        self.failures = 0

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None
    ) -> None:
        if checkpoint is None or not metrics:
            return
        raw = metrics[0]
        numbers = checkpoint_metrics(raw)
        step = int(numbers.get("step", 0))
        if raw.get("final"):
            message = f"Training finished at step {step}; the result is in {checkpoint.path}"
            self.log.put.remote(TrainingEvent(message=message, step=step))
            return
        info = CheckpointInfo(step_number=step, metrics=numbers, path=f"{checkpoint.path}/{HF_CHECKPOINT}")
        self.log.put.remote(
            TrainingEvent(message=f"Checkpoint created at step {step}", step=step, checkpoint=info)
        )

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        self.failures += 1
        left = self.max_failures == -1 or self.failures <= self.max_failures
        then = (
            f"Ray Train restarts the workers from the last checkpoint (failure {self.failures}, "
            f"max_failures={self.max_failures})"
            if left
            else f"no retries are left (max_failures={self.max_failures})"
        )
        for rank, error in sorted(worker_exceptions.items()):
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            self.log.failed.remote(
                TrainingEvent(level="warn", message=f"Training worker {rank} failed: {reason}; {then}")
            )


class ControllerHandle(ControllerCallback):
    """Runs in Ray Train's controller as it starts: gives the event log the controller's handle, so
    that a cancel can abort the run the way Ray Train's own Ctrl-C does (``TrainController.abort``:
    workers stopped, placement group released) even before any worker runs, e.g. while the run
    waits for resources."""

    def __init__(self, log: Any) -> None:
        self.log = log

    def after_controller_start(self, train_run_context: Any) -> None:
        self.log.set_controller.remote(ray.get_runtime_context().current_actor)


def remote_event_log() -> Any:
    """A new event log actor (owned by the caller: it goes when the caller's handles do)."""
    return ray.remote(num_cpus=0, max_restarts=0)(EventLog).remote()
