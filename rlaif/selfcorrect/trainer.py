"""SCoRe on TRL: a GRPOTrainer whose rollout is two attempts and whose advantages and KL weights are per token.

How it maps onto TRL 1.16's GRPOTrainer (no trainer loop of its own):

- `rollout_func` (TRL's hook, `two_attempt_rollout`): attempt 1 from the prompt ids
  (k per problem, through TRL's own generation path, so vLLM server mode de-duplicates
  the k copies), then attempt 2 from x ⊕ y1 ⊕ bridge (one generation each: those
  prompts are all distinct). It returns the completion y1 ⊕ bridge ⊕ y2 and
  `env_mask` = 0 on the bridge, which TRL multiplies into the loss mask.
- rewards: two TRL reward functions, `attempt1` and `attempt2`, score each attempt's
  own text with one reward (`AttemptReward`); TRL gathers them across processes.
- advantages: `_generate_and_score_completions` replaces TRL's (B,) group advantages
  with (B, T) ones from `rlaif.selfcorrect.advantages` (TRL's loss takes (B, T)).
- KL weights: TRL adds `beta * per_token_kl` to the per-token loss, with
  per_token_kl = exp(ref − logp) − (ref − logp) − 1 against the reference policy (a
  second copy of the base model, or the adapter-disabled base with LoRA). While the
  loss is computed, `beta` is a `PerTokenBeta`: that product becomes w_t · KL_t with
  w_t = β1 or β2 per token. `args.beta` = max(β1, β2) only switches the reference on.
- loss: `loss_type="dr_grpo"` (a sum over tokens divided by a constant, B · L), on
  policy (one update per batch, so the clipped ratio is 1 and its gradient ∇log π):
  the gradient is that of the sample estimate of Eq. 3 / 4, scaled by 1 / (B · L).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from trl import GRPOTrainer

from rlaif.rl.checkpoints import MarkCompleteCheckpoints
from rlaif.selfcorrect.advantages import attempt_advantages, attempt_kl_weights, token_tensors
from rlaif.selfcorrect.prompts import AttemptIds

SEGMENTS, ATTEMPT1, ATTEMPT2 = "score_segments", "score_attempt1", "score_attempt2"
INTERNAL = (SEGMENTS, ATTEMPT1, ATTEMPT2)


@dataclass(frozen=True)
class SCoReSettings:
    """The SCoRe part of a run: stage boundary, α, β1, β2 and the second prompt's pieces."""

    stage1_steps: int
    alpha: float
    beta1: float
    beta2: float
    attempt: AttemptIds

    def stage(self, global_step: int) -> int:
        """Stage I for the first `stage1_steps` optimiser steps, then stage II."""
        return 1 if global_step < self.stage1_steps else 2


class PerTokenBeta(float):
    """TRL's `beta` as per-token KL weights: `beta * per_token_kl` becomes `weights * per_token_kl`.

    It compares (and prints) as 1.0, so TRL's `beta != 0.0` checks still see a KL term.
    """

    def __new__(cls, weights: torch.Tensor) -> PerTokenBeta:
        value = super().__new__(cls, 1.0)
        value.weights = weights
        return value

    def __mul__(self, other: Any) -> Any:
        if isinstance(other, torch.Tensor):
            return self.weights.to(other.device, other.dtype) * other
        return float(self) * other

    __rmul__ = __mul__


class AttemptReward:
    """One reward applied to one attempt's text (TRL's reward signature); named `attempt1` / `attempt2`."""

    def __init__(self, reward: Any, attempt: int):
        self.reward = reward
        self.attempt = attempt
        self.key = ATTEMPT1 if attempt == 1 else ATTEMPT2
        self.__name__ = f"attempt{attempt}"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        texts = kwargs[self.key]
        extra = {k: v for k, v in kwargs.items() if k not in INTERNAL and k != "completion_ids"}
        chat = bool(prompts) and isinstance(prompts[0], list)
        shown = [[{"role": "assistant", "content": t}] for t in texts] if chat else list(texts)
        return self.reward(prompts=prompts, completions=shown, **extra)


def _generate(trainer: Any, prompt_ids: list[list[int]], n: int) -> tuple[list[list[int]], list | None]:
    """Completions through TRL's own single-turn generation (transformers, or vLLM with its de-duplication)."""
    return trainer._generate_single_turn(prompt_ids, None, {}, n)


def _trimmed(attempt: AttemptIds, ids: list[list[int]], logprobs: list | None) -> tuple[list, list | None]:
    keep = [attempt.trim(row) for row in ids]
    ids = [list(row[:n]) for row, n in zip(ids, keep)]
    logprobs = None if logprobs is None else [list(row[:n]) for row, n in zip(logprobs, keep)]
    return ids, logprobs


def two_attempt_rollout(prompts: list[Any], trainer: Any) -> dict[str, Any]:
    """TRL `rollout_func`: y1 ~ π(·|x), then y2 ~ π(·|x ⊕ y1 ⊕ bridge), as one completion y1 ⊕ bridge ⊕ y2."""
    attempt: AttemptIds = trainer.score.attempt
    k = trainer.num_generations if trainer.model.training else trainer.num_generations_eval
    prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
    prompt_ids = [list(ids) for ids in prompt_ids]
    first, lp1 = _trimmed(attempt, *_generate(trainer, prompt_ids, k))
    bridges = [attempt.bridge_after(ids) for ids in first]
    second_prompts = [x + y1 + b for x, y1, b in zip(prompt_ids, first, bridges)]
    second, lp2 = _trimmed(attempt, *_generate(trainer, second_prompts, 1))
    completions = [y1 + b + y2 for y1, b, y2 in zip(first, bridges, second)]
    logprobs = None
    if lp1 is not None and lp2 is not None:
        logprobs = [a + [0.0] * len(b) + c for a, b, c in zip(lp1, bridges, lp2)]
    trainer.score_rollout = [{"prompt_ids": x, "attempt1_ids": y1, "bridge_ids": b, "attempt2_ids": y2}
                             for x, y1, b, y2 in zip(prompt_ids, first, bridges, second)]
    return {
        "prompt_ids": prompt_ids, "completion_ids": completions, "logprobs": logprobs,
        "env_mask": [[1] * len(y1) + [0] * len(b) + [1] * len(y2) for y1, b, y2 in zip(first, bridges, second)],
        SEGMENTS: [(len(y1), len(b), len(y2)) for y1, b, y2 in zip(first, bridges, second)],
        ATTEMPT1: [attempt.decode(ids) for ids in first], ATTEMPT2: [attempt.decode(ids) for ids in second],
    }


class SCoReTrainer(MarkCompleteCheckpoints, GRPOTrainer):
    """GRPOTrainer running SCoRe's stage I for `score.stage1_steps` optimiser steps, then stage II.

    `reward_funcs` must be `[AttemptReward(r, 1), AttemptReward(r, 2)]` (see `attempt_rewards`).
    """

    _name = "SCoRe"

    def __init__(self, *args: Any, score: SCoReSettings, **kwargs: Any):
        self.score = score
        self.score_rollout: list[dict[str, Any]] = []
        self._attempt_rewards: torch.Tensor | None = None
        super().__init__(*args, rollout_func=two_attempt_rollout, **kwargs)
        names = [getattr(f, "__name__", "") for f in self.reward_funcs]
        if names != ["attempt1", "attempt2"]:
            raise ValueError(f"SCoReTrainer needs reward_funcs [attempt1, attempt2] (AttemptReward), got {names}")

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> torch.Tensor:
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._attempt_rewards = rewards  # (all processes' rows, 2): kept for the per-attempt advantages
        return rewards

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        k = self.num_generations if mode == "train" else self.num_generations_eval
        stage = self.score.stage(self.state.global_step)
        rewards = self._attempt_rewards
        r1, r2 = rewards[:, 0].float().cpu(), rewards[:, 1].float().cpu()
        adv1, adv2 = attempt_advantages(r1, r2, k, stage, self.score.alpha)
        rows = slice(self.accelerator.process_index * len(inputs), (self.accelerator.process_index + 1) * len(inputs))
        kl1, kl2 = attempt_kl_weights(stage, self.score.beta1, self.score.beta2)
        segments = [inp[SEGMENTS] for inp in inputs]
        device = output["completion_ids"].device
        advantages, weights = token_tensors(segments, output["completion_ids"].size(1), adv1[rows], adv2[rows], kl1, kl2)
        output["advantages"], output["kl_weights"] = advantages.to(device), weights.to(device)
        metrics = self._metrics[mode]
        metrics["score/stage"].append(float(stage))
        metrics["score/improved"].append((r2 > r1).float().mean().item())
        metrics["score/worsened"].append((r2 < r1).float().mean().item())
        return output

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        if self.beta == 0.0:
            return super()._compute_loss(model, inputs)
        beta, self.beta = self.beta, PerTokenBeta(inputs["kl_weights"])
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self.beta = beta


def attempt_rewards(reward: Any) -> list[AttemptReward]:
    """The two reward functions SCoReTrainer takes: the same reward on attempt 1 and on attempt 2."""
    return [AttemptReward(reward, 1), AttemptReward(reward, 2)]
