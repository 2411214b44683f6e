"""Resumable RL runs: complete checkpoints, the run directory's rules, whole-run figures.

An RL run writes one directory:

    OUT/policy/            the trained policy (a plain model directory with README.md, the model card)
    OUT/<algo>_log.jsonl   one line per optimiser step (step numbers count the whole run)
    OUT/<algo>_log.jsonl.meta.json, OUT/<algo>_curve.png
    OUT/checkpoints/checkpoint-N/   TRL / transformers Trainer checkpoints while it runs

A checkpoint counts only once `rlaif-complete.json` is in it: transformers writes
a checkpoint's files one after another, straight into `checkpoint-N`, so a kill
during a save leaves a folder that looks like a checkpoint but is not one. The
marker is written (atomically) after the trainer's own save returns, and older
checkpoints are pruned only after that, so a kill at any moment leaves the
previous complete checkpoint in place. `--resume` continues from the newest
complete checkpoint, cuts the log back to that step and deletes incomplete
checkpoint folders; the log then holds every step of the run exactly once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlaif.errors import RlaifError
from rlaif.io import read_jsonl, repair_tail, write_json
from rlaif.runs import Run, lock_path

logger = logging.getLogger(__name__)

MARKER = "rlaif-complete.json"
CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_root(out: str | Path) -> Path:
    return Path(out) / CHECKPOINTS


def checkpoint_step(path: Path) -> int | None:
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else None


def is_complete(path: Path) -> bool:
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("step") == checkpoint_step(path)


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None and is_complete(p)]
    return sorted(found, key=checkpoint_step)


def last_complete_checkpoint(root: Path) -> Path | None:
    complete = complete_checkpoints(root)
    return complete[-1] if complete else None


def mark_complete(path: Path, step: int, **extra: Any) -> None:
    """Declare `path` a complete checkpoint of `step` (after every file of it is written)."""
    write_json(path / MARKER, {"step": step, "saved_at": time.time(), **extra})


def prune_checkpoints(root: Path, keep: int = 1) -> None:
    """Delete all but the newest `keep` complete checkpoints, and incomplete ones older than the newest complete."""
    complete = complete_checkpoints(root)
    newest = checkpoint_step(complete[-1]) if complete else None
    for path in complete[:-keep] if keep else complete:
        shutil.rmtree(path, ignore_errors=True)
    if newest is None:
        return
    for path in root.iterdir():
        step = checkpoint_step(path)
        if step is not None and step < newest and path.is_dir() and not is_complete(path):
            shutil.rmtree(path, ignore_errors=True)


def drop_incomplete(root: Path) -> list[int]:
    """Delete checkpoint folders without the marker (a kill cut their save short); returns their steps."""
    dropped = []
    if root.is_dir():
        for path in root.iterdir():
            step = checkpoint_step(path)
            if step is not None and path.is_dir() and not is_complete(path):
                shutil.rmtree(path, ignore_errors=True)
                dropped.append(step)
    return sorted(dropped)


class MarkCompleteCheckpoints:
    """Trainer mixin: after the trainer's own `_save_checkpoint`, mark the folder complete and prune.

    Put it before the TRL trainer in the bases: `class T(MarkCompleteCheckpoints, GRPOTrainer)`.
    """

    rlaif_keep_checkpoints = 1

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)  # type: ignore[misc]
        if self.args.should_save:  # type: ignore[attr-defined]
            step = self.state.global_step  # type: ignore[attr-defined]
            path = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{step}"  # type: ignore[attr-defined]
            mark_complete(path, step)
            prune_checkpoints(path.parent, self.rlaif_keep_checkpoints)


def cut_log(log: Path, last_step: int) -> dict[str, Any] | None:
    """Keep the log's rows up to `last_step` (the resumed checkpoint); returns the last kept row."""
    if not log.exists():
        return None
    repair_tail(log)
    rows = [row for row in read_jsonl(log) if int(row.get("step", 0)) <= last_step]
    tmp = log.with_name(log.name + ".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(log)
    return rows[-1] if rows else None


@contextlib.contextmanager
def open_rl_run(out: Path, log: Path, config: Any, resume: bool, overwrite: bool,
                stage: str) -> Iterator[tuple[Run, Path | None]]:
    """Apply the --resume / --overwrite rules to an RL output directory and lock it for the run.

    Yields the `rlaif.runs.Run` of the log (lock, settings check, meta) and the checkpoint
    to resume from (None: start at step 1). A non-empty OUT needs --resume (continue from
    its newest complete checkpoint, with the same settings) or --overwrite (delete it and
    start again). A finished run (`run.old_meta["status"] == "done"`) is left as it is.
    """
    if resume and overwrite:
        raise RlaifError("--resume and --overwrite contradict each other; pass one of them.")
    if out.exists() and not out.is_dir():
        raise RlaifError(f"--output-dir {out} is a file; choose a directory.")
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise RlaifError(f"{out} is not empty: pass --overwrite to replace that run, --resume to continue it, "
                         "or choose another --output-dir.")
    out.mkdir(parents=True, exist_ok=True)
    mode = "overwrite" if overwrite else "resume"
    with Run(log, config, mode=mode, key="step", stage=stage) as run:
        if overwrite:
            _clear(out, keep={lock_path(log).name})
        finished = run.old_meta.get("status") == "done"
        checkpoint = _resume_point(out, log) if resume and not finished else None
        yield run, checkpoint


def _resume_point(out: Path, log: Path) -> Path | None:
    root = checkpoint_root(out)
    dropped = drop_incomplete(root)
    checkpoint = last_complete_checkpoint(root)
    step = checkpoint_step(checkpoint) if checkpoint else 0
    cut_log(log, step)
    if dropped:
        logger.warning("Dropped incomplete checkpoint(s) at step %s (a kill cut the save short); resuming from "
                       "step %d.", ", ".join(map(str, dropped)), step)
    return checkpoint


def _clear(out: Path, keep: set[str]) -> None:
    for path in out.iterdir():
        if path.name in keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def log_summary(log: Path) -> dict[str, Any]:
    """Whole-run figures from the log: steps, first / last mean reward, seconds of training."""
    rows = list(read_jsonl(log)) if log.exists() else []
    rewards = [row["reward_mean"] for row in rows if row.get("reward_mean") is not None]
    return {
        "steps": rows[-1]["step"] if rows else 0,
        "logged_steps": len(rows),
        "reward_first": rewards[0] if rewards else None,
        "reward_last": rewards[-1] if rewards else None,
        "train_seconds": rows[-1].get("seconds") if rows else None,
    }
