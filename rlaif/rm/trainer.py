"""TRL's RewardTrainer, taught the soft-label loss.

RewardTrainer trains on hard pairs (`chosen_ids` beat `rejected_ids`, optionally
by a margin). Here the two sides are response A and response B, and each example
carries `p`, the probability that A is better; the collator passes `p` through
and `compute_loss` uses `soft_label_loss`. Everything else (checkpoints, logging,
evaluation loop, accelerate launch, PEFT) is TRL's. Kept apart from
rlaif/rm/__init__.py so that importing the CLI does not import TRL.

Whole-run figures survive a resume: each checkpoint's trainer_state.json
carries the run's loss sum and token count so far (`RunTotals`), so after
`--resume` `train_loss` is the mean over every step of the run and
`num_tokens` counts every step's tokens, not only the resumed ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from trl import RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from rlaif.rm.loss import soft_label_loss


@dataclass
class SoftPreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator (A rows first, then B rows), plus the soft labels `p`."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        batch["p"] = torch.tensor([float(example["p"]) for example in examples], dtype=torch.float)
        return batch


class RunTotals(TrainerCallback, ExportableState):
    """Saves the run's loss sum and token count in every checkpoint, and restores them on resume."""

    def __init__(self, trainer: Any = None):
        self.trainer = trainer

    def state(self) -> dict[str, Any]:
        trainer = self.trainer
        pending = getattr(trainer, "_tr_loss", None)  # the loss of the steps since the last log
        loss_sum = (getattr(trainer, "_prior_loss_sum", 0.0) + getattr(trainer, "_total_loss_scalar", 0.0)
                    + (float(pending.item()) if isinstance(pending, torch.Tensor) else 0.0))
        return {"args": {}, "attributes": {"loss_sum": loss_sum,
                                           "train_tokens": int(getattr(trainer, "_total_train_tokens", 0))}}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        saved = state.stateful_callbacks.get(type(self).__name__)
        attributes = saved.get("attributes", {}) if isinstance(saved, dict) and state.global_step else {}
        self.trainer._prior_loss_sum = float(attributes.get("loss_sum", 0.0))
        self.trainer._total_train_tokens = int(attributes.get("train_tokens", 0))
        self.trainer._resumed_step = state.global_step
        state.stateful_callbacks[type(self).__name__] = self.state()  # a checkpoint saved without it: add it


class SoftLabelRewardTrainer(RewardTrainer):
    """RewardTrainer whose loss is the cross-entropy against soft labels p (hard pairs: p = 1)."""

    _tag_names = ["trl", "reward-trainer", "rlaif", "soft-labels"]

    def __init__(self, *args: Any, **kwargs: Any):
        if kwargs.get("data_collator") is None:
            tokenizer = kwargs["processing_class"]
            kwargs["data_collator"] = SoftPreferenceCollator(pad_token_id=tokenizer.pad_token_id)
        self._prior_loss_sum = 0.0
        self._resumed_step = 0
        super().__init__(*args, **kwargs)
        self.add_callback(RunTotals(self))

    def whole_run(self) -> dict[str, Any]:
        """Figures over every step of the run, resumed or not (TRL's `train_loss` covers this call's steps)."""
        steps = self.state.global_step
        total = self._prior_loss_sum + getattr(self, "_total_loss_scalar", 0.0)
        return {"train_loss": total / steps if steps else 0.0, "num_tokens": self._total_train_tokens,
                "global_step": steps, "steps_this_run": steps - self._resumed_step,
                "resumed_from_step": self._resumed_step}

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["chosen_ids", "rejected_ids", "p"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
        mode = "train" if self.model.training else "eval"
        p = inputs.pop("p")
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        rewards_a, rewards_b = torch.chunk(outputs.logits.squeeze(-1).float(), chunks=2)  # fp32 even under bf16
        loss = soft_label_loss(rewards_a, rewards_b, p.to(rewards_a.device))
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean((rewards_a + rewards_b) ** 2)
        self._record_metrics(mode, inputs, outputs.logits, rewards_a - rewards_b, p)
        return (loss, outputs) if return_outputs else loss

    def _record_metrics(self, mode: str, inputs: dict, logits: torch.Tensor, delta: torch.Tensor, p: torch.Tensor) -> None:
        """TRL's reward statistics; `accuracy` counts agreement with the label's side (p = 0.5 left out)."""
        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        with torch.no_grad():
            rewards = self.accelerator.gather(logits.detach())
            self._metrics[mode]["min_reward"].append(rewards.min().item())
            self._metrics[mode]["mean_reward"].append(rewards.mean().item())
            self._metrics[mode]["max_reward"].append(rewards.max().item())
            decided = p != 0.5
            if decided.any():
                right = torch.where(p > 0.5, delta > 0, delta < 0)[decided].float().mean()
                self._metrics[mode]["accuracy"].append(self.accelerator.gather_for_metrics(right).mean().item())
            signed = torch.where(p >= 0.5, delta, -delta).mean()
            self._metrics[mode]["margin"].append(self.accelerator.gather_for_metrics(signed).mean().item())
