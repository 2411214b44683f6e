"""TRL's PPOTrainer (trl.experimental.ppo, TRL <= 1.12), made resumable.

TRL's PPO `train()` is one loop that always starts at step 0 and whose checkpoints
hold the policy only (not the value model), so it cannot resume by itself. This
subclass keeps the loop as it is and adds, around it:

- checkpoints of what training changes: the trainable parameters of policy and
  value model (`trainable.safetensors`: every weight for full fine-tuning, the
  adapters and value head with LoRA), optimiser, LR schedule, step counters and RNG
  states (`training_state.pt`), then the completion marker (rlaif.rl.checkpoints);
- resume: those are loaded back after TRL's set-up, the loop runs the remaining
  updates, the LR schedule spans the whole run, and a callback sets the step and
  episode counters at `on_train_begin` (after TRL zeroes them), so logged steps
  continue the killed run's numbering. The prompt order after a resume is a fresh
  shuffle from the restored RNG, so a resumed run is deterministic but not
  bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback
from trl.experimental.ppo import PPOTrainer

from rlaif.errors import RlaifError
from rlaif.rl import checkpoints

STATE_FILE, WEIGHTS_FILE = "training_state.pt", "trainable.safetensors"


class _ContinueCounters(TrainerCallback):
    """Set the trainer state's counters to the resumed run's at train begin (TRL's loop zeroes them)."""

    def __init__(self, step: int, episode: int, total_steps: int):
        self.step, self.episode, self.total_steps = step, episode, total_steps

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        state.global_step, state.episode, state.max_steps = self.step, self.episode, self.total_steps


class ResumablePPOTrainer(PPOTrainer):
    """PPOTrainer with complete, resumable checkpoints every `args.save_steps` updates.

    `total_steps` is the whole run's number of updates; `args.total_episodes` must cover only
    the updates still to do. `resume_from` is a complete checkpoint folder or None.
    """

    def __init__(self, *args: Any, total_steps: int, resume_from: Path | None = None, **kwargs: Any):
        self.rlaif_total_steps = total_steps  # read by create_scheduler, which PPOTrainer.__init__ calls
        super().__init__(*args, **kwargs)
        self.resumed_step = 0
        if resume_from is not None:
            self.resumed_step = self._restore(resume_from)
        self.add_callback(_ContinueCounters(self.resumed_step, self.resumed_step * self.args.batch_size, total_steps))

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        return super().create_scheduler(self.rlaif_total_steps, optimizer)  # the whole run, resumed or not

    def _trainable(self) -> dict[str, torch.Tensor]:
        wrapper = self.accelerator.unwrap_model(self.model)
        return {name: p.detach().contiguous() for name, p in wrapper.named_parameters() if p.requires_grad}

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        if not self.args.should_save:
            return
        step = self.state.global_step
        path = Path(self.args.output_dir) / f"checkpoint-{step}"
        path.mkdir(parents=True, exist_ok=True)
        save_file(self._trainable(), str(path / WEIGHTS_FILE))
        torch.save({
            "optimizer": self.optimizer.state_dict(), "scheduler": self.lr_scheduler.state_dict(),
            "global_step": step, "episode": self.state.episode,
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }, path / STATE_FILE)
        checkpoints.mark_complete(path, step)
        checkpoints.prune_checkpoints(path.parent, keep=1)

    def _restore(self, path: Path) -> int:
        """Load a checkpoint's trainable weights, optimiser, schedule and RNG; returns its step."""
        weights = load_file(str(path / WEIGHTS_FILE))
        wrapper = self.accelerator.unwrap_model(self.model)
        wanted = {name for name, p in wrapper.named_parameters() if p.requires_grad}
        if wanted != set(weights):
            raise RlaifError(f"{path} holds other trainable weights than this run has ({len(set(weights) ^ wanted)} "
                             "differ): it was made with other settings; pass --overwrite to start again.")
        wrapper.load_state_dict(weights, strict=False)
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)  # our own file
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return int(state["global_step"])
