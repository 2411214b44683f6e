"""Text rewards for TRL's PPO: any `reward_fn(prompts, completions) -> list[float]`.

TRL's `PPOTrainer` (trl.experimental.ppo) scores rollouts with
`get_reward(reward_model, query_responses, pad_token_id, context_length)`, which
runs `getattr(model, model.base_model_prefix)` on the *policy's* token ids and
reads `model.score(hidden_states[-1])` at the last response token. So its reward
model must share the policy's tokenizer (TRL issues #1979, #2451).

`TextRewardModel` meets that contract without touching TRL's train loop: its
"backbone" decodes the policy's ids to text (the prompt by looking up the exact
padded prompt row, the response up to its first pad token, as TRL counts it),
calls the text reward function once per batch, and returns the scores broadcast
over every position, so whichever position TRL reads is the score. The prompt
rows are left-padded to one fixed length when the data set is built (see
`rlaif.rl.ppo.build_prompt_dataset`), so the prompt/response split is a constant.
We chose this over a `PPOTrainer` subclass because `train()` is one 400-line
method that would have to be copied, and over patching `get_reward`, which
would change TRL for every caller in the process. It relies only on
`get_reward`'s small contract, stable since TRL's PPOv2.

`RewardModelFunction` is such a text reward function backed by a sequence
classification reward model with its own tokenizer (the reward `--reward-model`
names for every RL command, see rlaif/rl/reward_functions.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from rlaif.rl.reward_functions import RewardFn, check_scores


class _DecodeAndScore(nn.Module):
    """The 'backbone' of `TextRewardModel`: policy ids -> texts -> scores, as a hidden state."""

    def __init__(self, reward_fn: RewardFn, tokenizer: Any, context_length: int, prompt_texts: dict[tuple, str]):
        super().__init__()
        self.reward_fn = reward_fn
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.prompt_texts = prompt_texts
        self.batches: list[dict[str, list]] = []  # every scored batch since the last `pop_batches`

    def decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[list[str], list[str], list[int]]:
        """Prompt texts, response texts and response lengths (tokens up to the first pad, as TRL counts)."""
        ctx = self.context_length
        prompts, completions, lengths = [], [], []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            prompt = self.prompt_texts.get(tuple(ids[:ctx]))
            if prompt is None:  # not one of our rows: decode what the policy saw
                shown = [t for t, m in zip(ids[:ctx], mask[:ctx]) if m]
                prompt = self.tokenizer.decode(shown, skip_special_tokens=True)
            tail = mask[ctx:]
            length = tail.index(0) if 0 in tail else len(tail)
            prompts.append(prompt)
            completions.append(self.tokenizer.decode(ids[ctx : ctx + length], skip_special_tokens=True))
            lengths.append(length)
        return prompts, completions, lengths

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> BaseModelOutput:
        if input_ids.shape[1] < self.context_length:
            raise RuntimeError(f"Got {input_ids.shape[1]} tokens, fewer than the prompt length {self.context_length}.")
        prompts, completions, lengths = self.decode(input_ids, attention_mask)
        scores = check_scores(self.reward_fn(prompts=prompts, completions=completions), len(prompts))
        self.batches.append({"prompts": prompts, "completions": completions, "scores": scores, "lengths": lengths})
        values = torch.tensor(scores, dtype=torch.float32, device=input_ids.device)
        hidden = values[:, None, None].expand(-1, input_ids.shape[1], 1)
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=(hidden,))


class TextRewardModel(nn.Module):
    """A reward "model" for TRL's `PPOTrainer` that scores decoded texts with `reward_fn`.

    `reward_fn(prompts=[...], completions=[...]) -> list[float]` is TRL's reward function
    signature (e.g. `rlaif.drlaif.DRLAIFScorer` or `RewardModelFunction`). `prompt_texts`
    maps each padded prompt row (pad ids replaced by 0, as `get_reward` passes them) to
    the user's prompt text, so the scorer sees the prompt without the policy's chat markup.
    """

    base_model_prefix = "backbone"

    def __init__(self, reward_fn: RewardFn, tokenizer: Any, context_length: int, prompt_texts: dict[tuple, str]):
        super().__init__()
        self.backbone = _DecodeAndScore(reward_fn, tokenizer, context_length, prompt_texts)
        self.score = nn.Identity()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Scores, one per row (for use outside TRL)."""
        return self.score(self.backbone(input_ids, attention_mask, **kwargs).hidden_states[-1])[:, -1, 0]

    def pop_batches(self) -> list[dict[str, list]]:
        """The batches scored since the last call: prompts, completions, scores, lengths."""
        batches, self.backbone.batches = self.backbone.batches, []
        return batches


class RewardModelFunction:
    """Text reward function from a reward model: a num_labels=1 sequence classifier, any tokenizer.

    Loading, checks (num_labels=1) and the text the model reads (chat template, else
    prompt + response + EOS, cut from the left) are those of `rlaif train-rm`
    (rlaif/rm/data.py), so PPO scores texts exactly as the reward model was trained on.
    """

    def __init__(self, model_dir: str | Path, batch_size: int = 16, max_length: int = 1024, device: str | None = None):
        from rlaif.rm.data import load_model_and_tokenizer  # noqa: PLC0415

        self.model, self.tokenizer, _ = load_model_and_tokenizer(str(model_dir), training=False)
        self.model.eval().to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        limits = (getattr(self.model.config, "max_position_embeddings", None), self.tokenizer.model_max_length)
        self.max_length = min([max_length] + [x for x in limits if isinstance(x, int) and 0 < x < 1_000_000])
        self.batch_size = batch_size

    def __call__(self, prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        from rlaif.rm.data import encode_texts  # noqa: PLC0415
        from rlaif.rm.eval import compute_rewards  # noqa: PLC0415

        ids, _ = encode_texts(self.tokenizer, list(prompts), list(completions), self.max_length)
        return compute_rewards(self.model, self.tokenizer.pad_token_id, ids, self.batch_size)
