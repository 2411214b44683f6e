"""The checkpoints of a `train-rm` run: which are complete, which a kill cut short.

transformers writes a checkpoint's files one after another straight into
`OUT/checkpoint-N` (weights, optimizer, scheduler, RNG state) and
`trainer_state.json` last. So a checkpoint is complete when its
`trainer_state.json` parses and records step N; a kill during a save leaves a
folder without it (or with a torn one). `--resume` continues from the newest
complete checkpoint and deletes the incomplete ones (under the run's lock, so
no other process is writing them).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

STATE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: Path) -> int | None:
    match = _NAME.match(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def read_state(path: Path) -> dict[str, Any] | None:
    """A checkpoint's trainer state, or None when the save did not finish."""
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("global_step") != checkpoint_step(path):
        return None
    return state


def checkpoints(out: Path) -> tuple[list[Path], list[Path]]:
    """(complete, incomplete) checkpoint folders of `out`, oldest first."""
    if not out.is_dir():
        return [], []
    found = sorted((p for p in out.iterdir() if checkpoint_step(p) is not None), key=checkpoint_step)
    complete = [p for p in found if read_state(p) is not None]
    return complete, [p for p in found if p not in complete]


def resume_point(out: Path) -> tuple[Path | None, list[int]]:
    """The newest complete checkpoint (None: there is none), after deleting incomplete ones (their steps)."""
    complete, incomplete = checkpoints(out)
    steps = [checkpoint_step(p) or 0 for p in incomplete]
    for path in incomplete:
        shutil.rmtree(path, ignore_errors=True)
    return (complete[-1] if complete else None), steps
