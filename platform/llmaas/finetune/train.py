"""Run a fine-tuning job on the Ray cluster: Ray Train's ``TorchTrainer`` around Hugging Face
``Trainer`` + PEFT (the per-worker function is ``llmaas.finetune.worker``).

    run = start_training(spec)          # returns at once; training runs on the cluster
    for event in run.poll(): ...        # new events since the last poll
    run.cancel()                        # stops after the current step
    result = run.result()               # TrainingResult, or raises TrainingFailed / TrainingCancelled

or, blocking, ``run_training(spec, on_event)``. Either works from a Ray actor (the job manager's).

- Where ``fit()`` runs: in a Ray task (``num_cpus=0``) that the caller owns. It first waits until
  the cluster can hold the workers (a "Waiting for resources" event; see ``_wait_for_resources``),
  then runs ``TorchTrainer.fit()``. Ray Train's controller and workers are owned by that task,
  so ending it (the last resort of a cancel) ends them too.
- Failures: ``FailureConfig(max_failures)``; a restarted worker group resumes from the last
  checkpoint Ray Train persisted (the Trainer's ``resume_from_checkpoint``). Rerunning a job id
  whose run is in ``storage_path`` resumes it too (Ray Train restores a run by its name).
  A run that ends without its final artifact raises ``TrainingFailed`` saying why: there is no
  half-trained result.
- Cancel: a flag in the run's event log, checked while the run waits for resources and by the
  workers after every step (Hugging Face's ``control.should_training_stop``); if the run has not
  ended ``force_after_s`` later (a worker stuck in a step or loading a model), Ray Train's
  controller is told to abort (as Ctrl-C on a driver does: workers stopped, placement group
  released); if even that has not ended it ``KILL_AFTER_ABORT_S`` later, the task running
  ``fit()`` is ended with ``force=True``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from llmaas.finetune.data import validate_file
from llmaas.finetune.spec import (
    CheckpointInfo,
    TrainingCancelled,
    TrainingEvent,
    TrainingFailed,
    TrainingResult,
    TrainingSpec,
)

#: After a cancel's abort, how long the run may take to end before its ``fit()`` task is ended:
#: more than Ray Train's wait for a placement group (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s).
KILL_AFTER_ABORT_S = 90.0


def check_files(spec: TrainingSpec) -> None:
    """Refuse files that cannot train this spec (wrong kind, a bad line, unknown validation labels),
    before any resource is taken. Raises ``TrainingFailed`` naming the file and the fault."""
    train = validate_file(spec.training_file)
    files = [("training_file", spec.training_file, train)]
    if spec.validation_file is not None:
        files.append(("validation_file", spec.validation_file, validate_file(spec.validation_file)))
    for name, path, check in files:
        if check.error is not None:
            raise TrainingFailed(f"{name} {path.name}: {check.error}")
        if check.kind not in spec.file_kinds:
            raise TrainingFailed(
                f"{name} {path.name} holds {check.kind} examples; a {spec.kind} job trains on "
                f"{' or '.join(spec.file_kinds)} examples"
            )
    if len(files) == 2 and files[1][2].kind != train.kind:
        raise TrainingFailed(
            f"validation_file holds {files[1][2].kind} examples, training_file {train.kind} ones"
        )
    if spec.kind == "classification" and len(files) == 2:
        unknown = sorted(set(files[1][2].labels) - set(train.labels))
        if unknown:
            raise TrainingFailed(f"validation_file has labels the training file lacks: {unknown}")


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[:3])[:600] if lines else type(error).__name__


def _wait_for_resources(spec: TrainingSpec, log: Any) -> None:
    """Wait, cancellably, until the cluster can hold the run's workers.

    NOTE: Ray Train's controller waits for its placement group without yielding to its event loop,
    so neither the cancel flag (no worker runs yet) nor its own ``abort`` reaches a run that waits
    for resources, and ending it then leaves its pending placement group to the owning job. So the
    run waits here first, on a placement group of the same shape that this loop removes in every
    case, and starts Ray Train once one fits."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = spec.worker_bundle()
    group = placement_group([bundle] * spec.num_workers, strategy="PACK")  # Ray Train's default strategy
    try:
        waiting = False
        while not group.wait(timeout_seconds=1):
            if not waiting:
                waiting = True
                log.put.remote(
                    TrainingEvent(message=f"Waiting for resources: {spec.num_workers} worker(s) of {bundle}")
                )
            if ray.get(log.cancelled.remote()):
                raise TrainingCancelled(f"job {spec.job_id} was cancelled while it waited for resources")
    finally:
        remove_placement_group(group)


def _fit(spec: TrainingSpec, log: Any) -> TrainingResult:
    """Ray Train's run, in a Ray task: ``TorchTrainer.fit()`` and its result as a ``TrainingResult``."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from llmaas.finetune.events import HF_CHECKPOINT, ControllerEvents, ControllerHandle, checkpoint_metrics
    from llmaas.finetune.worker import train_loop_per_worker

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.model_dump(mode="json"), "sink": log},
        scaling_config=ScalingConfig(
            num_workers=spec.num_workers,
            use_gpu=spec.use_gpu,
            resources_per_worker=spec.worker_bundle(),
        ),
        run_config=RunConfig(
            name=spec.job_id,
            storage_path=spec.storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=spec.max_failures),
            callbacks=[ControllerEvents(log, spec.max_failures), ControllerHandle(log)],  # type: ignore[list-item]
        ),
    )

    def fail(error: TrainingFailed) -> TrainingFailed:
        level = "warn" if isinstance(error, TrainingCancelled) else "error"
        ray.get(log.put.remote(TrainingEvent(level=level, message=error.message)))
        return error

    try:
        _wait_for_resources(spec, log)
        result = trainer.fit()
    except TrainingCancelled as exc:
        raise fail(exc) from None
    except Exception as exc:
        if ray.get(log.cancelled.remote()):
            raise fail(TrainingCancelled(f"job {spec.job_id} was cancelled")) from None
        failures = ray.get(log.failures.remote())
        last = ray.get(log.last_checkpoint.remote())
        kept = (
            f"; the last checkpoint (step {last.step_number}) is in {last.path}"
            if last
            else "; no checkpoint was saved"
        )
        raise fail(
            TrainingFailed(
                f"training failed after {failures} worker failure(s) with max_failures={spec.max_failures}: "
                f"{_reason(exc)}{kept}"
            )
        ) from None
    if ray.get(log.cancelled.remote()):
        raise fail(
            TrainingCancelled(f"job {spec.job_id} was cancelled; its checkpoints stay in {result.path}")
        )
    final = result.metrics or {}
    if result.checkpoint is None or not final.get("final"):
        raise fail(
            TrainingFailed(f"training of {spec.job_id} ended without a result (its last report: {final})")
        )
    checkpoints = [
        CheckpointInfo(
            step_number=int(metrics.get("step", 0)),
            metrics=checkpoint_metrics(metrics),
            path=f"{checkpoint.path}/{HF_CHECKPOINT}",
        )
        for checkpoint, metrics in result.best_checkpoints or []
        if not metrics.get("final")
    ]
    numbers = checkpoint_metrics(final)
    return TrainingResult(
        job_id=spec.job_id,
        kind=spec.kind,
        method=spec.hyperparameters.method,
        output_dir=result.checkpoint.path,
        checkpoints=sorted(checkpoints, key=lambda c: c.step_number),
        trained_tokens=int(numbers.pop("trained_tokens", 0)),
        steps=int(numbers.pop("step", 0)),
        metrics=numbers,
        worker_failures=ray.get(log.failures.remote()),
    )


class TrainingRun:
    """A run on the cluster: poll its events, cancel it, wait for its result.

    Holds Ray handles only (an actor and an object ref), owned by the process that started it."""

    def __init__(self, spec: TrainingSpec, log: Any, ref: Any) -> None:
        self.spec = spec
        self._log = log
        self._ref = ref
        self._seen = 0
        self._cancel_timer: threading.Timer | None = None

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    def poll(self, timeout: float | None = 30) -> list[TrainingEvent]:
        """Events since the last poll, oldest first."""
        import ray

        events: list[TrainingEvent] = ray.get(self._log.since.remote(self._seen), timeout=timeout)
        self._seen += len(events)
        return events

    def done(self) -> bool:
        import ray

        ready, _ = ray.wait([self._ref], timeout=0)
        return bool(ready)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the run to end; True if it has."""
        import ray

        ready, _ = ray.wait([self._ref], timeout=timeout)
        return bool(ready)

    def cancel(self, force_after_s: float = 60.0) -> None:
        """Stop the run after its current step. If it has not ended ``force_after_s`` seconds later
        (no worker runs yet: it waits for resources, or loads the model), abort it through Ray Train's
        controller; as a last resort, ``KILL_AFTER_ABORT_S`` later, end the task running ``fit()``.
        ``result()`` then raises ``TrainingCancelled``."""
        import ray

        ray.get(self._log.cancel.remote())
        if self._cancel_timer is None and not self.done():
            self._cancel_timer = threading.Timer(force_after_s, self._abort)
            self._cancel_timer.daemon = True
            self._cancel_timer.start()

    def _abort(self) -> None:
        import ray

        if self.done():
            return
        try:
            controller = ray.get(self._log.controller.remote(), timeout=30)
            if controller is not None:
                # NOTE: not waited on: the controller may be blocked waiting for a placement group
                # (up to RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S); it aborts, releasing it, after that.
                controller.abort.remote()
        except Exception:
            pass
        self._cancel_timer = threading.Timer(KILL_AFTER_ABORT_S, self._kill)
        self._cancel_timer.daemon = True
        self._cancel_timer.start()

    def _kill(self) -> None:
        import ray

        if not self.done():
            # NOTE: Ray Train's controller and workers are owned by this task and end with it; a
            # placement group that was still pending is only freed when the owning job ends.
            ray.cancel(self._ref, force=True)

    def result(self, timeout: float | None = None) -> TrainingResult:
        """The result once the run ends; raises ``TrainingFailed`` (``TrainingCancelled``) if it has none."""
        import ray

        try:
            result: TrainingResult = ray.get(self._ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)  # the task's own exception
            if isinstance(cause, TrainingFailed):
                raise type(cause)(cause.message) from None
            raise TrainingFailed(f"training of {self.job_id} failed: {_reason(exc)}") from None
        except ray.exceptions.RayError as exc:  # the task itself ended: a forced cancel, a lost node
            if ray.get(self._log.cancelled.remote()):
                raise TrainingCancelled(f"job {self.job_id} was cancelled (forced)") from None
            raise TrainingFailed(f"training of {self.job_id} ended: {_reason(exc)}") from None
        finally:
            if self._cancel_timer is not None and self.done():
                self._cancel_timer.cancel()
        return result


def start_training(spec: TrainingSpec) -> TrainingRun:
    """Check the files, then start the run on the cluster (Ray must be initialized); returns at once."""
    import ray

    from llmaas.finetune.events import remote_event_log

    check_files(spec)
    log = remote_event_log()
    # NOTE: max_retries=0: worker failures are Ray Train's to retry (max_failures); rerunning the
    # whole fit() after its task died would resume a run the caller may have given up on.
    task = ray.remote(num_cpus=0, max_retries=0)(_fit)
    return TrainingRun(spec, log, task.remote(spec, log))


def run_training(
    spec: TrainingSpec,
    on_event: Callable[[TrainingEvent], None] | None = None,
    poll_s: float = 0.5,
) -> TrainingResult:
    """Train ``spec`` to the end, calling ``on_event`` with each event as it comes (blocking)."""
    run = start_training(spec)
    try:
        while True:
            finished = run.wait(poll_s)
            for event in run.poll():
                if on_event is not None:
                    on_event(event)
            if finished:
                break
    except BaseException:
        if not run.done():
            run.cancel(force_after_s=0.0)
        raise
    # NOTE: controller callbacks put events asynchronously; give the last ones a moment.
    time.sleep(0.1)
    for event in run.poll():
        if on_event is not None:
            on_event(event)
    return run.result()
