"""`StepLog`: the log of an RL run, one JSON line per optimiser step, from TRL's logged metrics.

Rows go through the run's `rlaif.runs.Run` (flushed and fsynced, so a kill loses
no finished step); `step` is the trainer's global step, which a resumed run
continues, and `seconds` counts the training time of the whole run, across resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback


class StepLog(TrainerCallback):
    """Write one row per optimiser step through `run.write` (flushed and fsynced).

    `row_of(logs)` maps TRL's logged metrics to a row, or None for logs that are not a
    training step (evaluation, the final summary). `seconds_before` is the training time
    the resumed checkpoint had already spent, so `seconds` counts the whole run.
    """

    def __init__(self, run: Any, row_of: Callable[[dict[str, Any]], dict[str, Any] | None],
                 seconds_before: float = 0.0):
        self.run = run
        self.row_of = row_of
        self.seconds_before = seconds_before
        self.started = time.time()
        self.rows: list[dict[str, Any]] = []

    def on_train_begin(self, *_: Any, **__: Any) -> None:
        self.started = time.time()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
        row = self.row_of(logs or {})
        if row is None:
            return
        seconds = round(self.seconds_before + time.time() - self.started, 3)
        row = {"step": state.global_step, **row, "seconds": seconds}
        self.rows.append(row)
        self.run.write([row])
