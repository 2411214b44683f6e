"""Helpers for the RL kill-and-resume tests: a real `rlaif` subprocess that SIGKILLs itself on cue.

Two cues, both read from the environment of the subprocess:
- RLAIF_TEST_KILL_AT_CALL=N: the reward function kills its process on its N-th call
  (that is, while step N of this process is being scored);
- RLAIF_TEST_KILL_AT_SAVE=S: the process dies while saving the checkpoint of step S,
  after the trainer wrote its files and before rlaif marks the checkpoint complete.
Every reward call appends {"pid", "call"} to RLAIF_TEST_CALLS, so a test can count
how many steps each process really ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REWARD_MODULE = '''
import json, os, signal

CALLS = 0


def reward(prompts, completions, **kwargs):
    global CALLS
    CALLS += 1
    with open(os.environ["RLAIF_TEST_CALLS"], "a") as handle:
        handle.write(json.dumps({"pid": os.getpid(), "call": CALLS}) + "\\n")
    if CALLS == int(os.environ.get("RLAIF_TEST_KILL_AT_CALL", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
    return [0.1 * len(c.split()) + c.split().count("good") for c in completions]
'''

KILL_PATCH = '''
import os, signal

from rlaif.rl import checkpoints

_mark_complete = checkpoints.mark_complete


def mark_complete(path, step, **extra):
    if step == int(os.environ.get("RLAIF_TEST_KILL_AT_SAVE", "0")):
        os.kill(os.getpid(), signal.SIGKILL)  # the checkpoint's files are written, its marker is not
    _mark_complete(path, step, **extra)


checkpoints.mark_complete = mark_complete
'''


def write_helpers(folder: Path) -> None:
    (folder / "kill_reward.py").write_text(REWARD_MODULE)
    (folder / "kill_patch.py").write_text(KILL_PATCH)


def run_rlaif(folder: Path, args: list[str], kill_at_call: int = 0, kill_at_save: int = 0,
              python: str = sys.executable) -> subprocess.CompletedProcess:
    """`rlaif ARGS` in a subprocess (cwd `folder`, the kill patch loaded), waiting for it to end."""
    env = {**os.environ, "PYTHONPATH": str(folder), "RLAIF_TEST_CALLS": str(folder / "calls.jsonl"),
           "RLAIF_TEST_KILL_AT_CALL": str(kill_at_call), "RLAIF_TEST_KILL_AT_SAVE": str(kill_at_save),
           "HF_HUB_OFFLINE": "1", "RLAIF_THREADS": "1", "OMP_NUM_THREADS": "1"}
    code = "import kill_patch; from rlaif.cli import cli; cli()"
    return subprocess.run([python, "-c", code, *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=600)


def calls_by_process(folder: Path) -> list[int]:
    """How many reward calls each process made, in the order the processes ran."""
    counts: dict[int, int] = {}
    for line in (folder / "calls.jsonl").read_text().splitlines():
        pid = json.loads(line)["pid"]
        counts[pid] = counts.get(pid, 0) + 1
    return list(counts.values())


def logged_steps(log: Path) -> list[int]:
    return [json.loads(line)["step"] for line in log.read_text().splitlines()]
