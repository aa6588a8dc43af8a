"""Progress on the command line: a tqdm bar on a terminal, log lines elsewhere (CI logs, files)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["ProgressBar", "replica_progress"]

# Replica states, from least to most advanced, for the one word shown per deployment.
_STATE_ORDER = ("STOPPING", "RECOVERING", "UPDATING", "PENDING_MIGRATION", "STARTING", "RUNNING")


class ProgressBar:
    """A tqdm bar on a terminal; otherwise a log line per ``steps``-th of the way or, with
    ``steps=None``, per change of the message.

    Call it as ``progress(stage, fraction)`` (the model builders' callback); ``total`` and ``unit``
    are what the bar counts (``100`` and ``%`` by default).
    """

    def __init__(self, label: str, *, total: int = 100, unit: str = "%", steps: int | None = 4) -> None:
        from tqdm import tqdm

        self.label = label
        self.total = max(total, 1)
        self.unit = unit
        self.steps = steps
        self.interactive = sys.stderr.isatty()
        self.bar: Any = tqdm(total=self.total, desc=f"  {label}", unit=unit, disable=not self.interactive)
        self.logged: object = None

    def __call__(self, stage: str, fraction: float) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        if self.interactive:
            self.bar.set_postfix_str(stage, refresh=False)
            self.bar.n = round(fraction * self.total)
            self.bar.refresh()
            return
        key = int(fraction * self.steps) if self.steps else stage
        if key != self.logged:
            self.logged = key
            shown = f"{fraction:4.0%} {stage}" if self.unit == "%" else stage
            print(f"  {self.label}: {shown}", flush=True)

    def set_total(self, total: int) -> None:
        """Change what the bar counts to (a deployment's target may only be known later)."""
        self.total = max(total, 1)
        self.bar.total = self.total

    def close(self) -> None:
        self.bar.close()


def replica_progress(
    replicas: Mapping[str, Mapping[str, int]],
    targets: Mapping[str, int],
    labels: Mapping[str, str] | None = None,
) -> tuple[int, int, str]:
    """``(running, target, message)`` for an application's replicas.

    ``replicas`` maps each deployment to its replica counts by state (Serve's ``replica_states``,
    by state name); ``targets`` maps deployments to the replicas they should run (a deployment
    Serve does not report yet counts as 0 running, "pending"); ``labels`` names deployments for
    people (``model-tiny-llama`` -> ``tiny-llama``). The message reads
    ``replicas 3/6 running (tiny-llama: 0/1 starting)``, listing the deployments not yet at target.
    """
    labels = labels or {}
    names = list(targets) + [name for name in replicas if name not in targets]
    running_total, target_total, behind = 0, 0, []
    for name in names:
        counts = replicas.get(name, {})
        running = counts.get("RUNNING", 0)
        active = sum(n for state, n in counts.items() if state not in {"STOPPING", "STOPPED"})
        target = targets.get(name, active)
        running_total += min(running, target)
        target_total += target
        if running < target:
            waiting = [s for s in _STATE_ORDER if s != "RUNNING" and counts.get(s, 0)]
            state = waiting[-1].lower() if waiting else "pending"
            behind.append(f"{labels.get(name, name)}: {running}/{target} {state}")
    message = f"replicas {running_total}/{target_total} running"
    if behind:
        message += f" ({', '.join(behind)})"
    return running_total, target_total, message
