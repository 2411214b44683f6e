"""RL from AI feedback with TRL's PPO, rewarded by any text reward function.

`run_ppo` trains a causal LM policy with `trl.experimental.ppo.PPOTrainer`: value
model initialised from the policy's weights, reference policy a frozen copy of it,
rewards from a reward model with any tokenizer (`RewardModelFunction`) or from the
feedback LLM directly (d-RLAIF), through `TextRewardModel` (see rlaif/ppo_rewards.py
for why an adapter module and not a trainer subclass). It writes the trained policy,
`ppo_log.jsonl` (reward / KL / response length per PPO step) and `ppo_curve.png`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlaif import __version__
from rlaif.backends.default import default_model_dir, is_default
from rlaif.errors import RlaifError
from rlaif.io import meta_path, parse_column_map, read_records, read_rows, write_json

if TYPE_CHECKING:
    from rlaif.ppo_rewards import RewardFn

logger = logging.getLogger(__name__)


@dataclass
class PPORunConfig:
    """Settings of one `rlaif ppo` run; CLI flags match the fields one to one."""

    prompts: str = field(metadata={"help": "Prompt file (JSONL/CSV/Parquet/saved dataset) with a `prompt` column."})
    policy: str = field(metadata={"help": "Policy to train: `default` (the embedded Gemma 3 270M), a causal LM directory or a Hugging Face id."})
    output_dir: str = field(metadata={"help": "Folder for the trained policy (policy/), ppo_log.jsonl, ppo_curve.png."})
    reward_model: str | None = field(
        default=None,
        metadata={"help": "Sequence-classification reward model directory (num_labels=1); any tokenizer."},
    )
    d_rlaif: bool = field(default=False, metadata={"help": "Reward = the feedback LLM's 1-10 score mapped to [-1, 1]."})
    feedback_model: str = field(default="default", metadata={"help": "Feedback LLM for --d-rlaif."})
    constitution: str = field(default="cai-harmless", metadata={"help": "Constitution for --d-rlaif."})
    principle: str | None = field(default=None, metadata={"help": "One principle id for --d-rlaif (default: the constitution's first)."})
    column_map: tuple[str, ...] = field(default=(), metadata={"help": "Map the prompt column: prompt=COLUMN."})
    steps: int = field(default=20, metadata={"help": "PPO updates; each generates and scores one batch."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per PPO update (per device)."})
    mini_batches: int = field(default=1, metadata={"help": "Mini-batches each update's batch is split into."})
    ppo_epochs: int = field(default=4, metadata={"help": "Passes over each batch per update."})
    learning_rate: float = field(default=3e-6, metadata={"help": "AdamW learning rate of policy and value model."})
    kl_coef: float = field(default=0.05, metadata={"help": "KL penalty coefficient against the reference policy."})
    response_length: int = field(default=64, metadata={"help": "Maximum new tokens per response."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the rollouts."})
    max_prompt_length: int = field(
        default=256, metadata={"help": "Prompt tokens kept; longer prompts lose their beginning (with a warning)."}
    )
    stop_at_eos: bool = field(default=True, metadata={"help": "End responses at the policy's EOS token."})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtract this from the score of responses that never reach EOS."}
    )
    plain_prompts: bool = field(
        default=False, metadata={"help": "Feed prompts as plain text even if the policy has a chat template."}
    )
    seed: int = field(default=42, metadata={"help": "Random seed (sampling, value head, data order)."})

    def validate(self) -> None:
        if bool(self.reward_model) == bool(self.d_rlaif):
            raise RlaifError("Give exactly one reward: --reward-model DIR or --d-rlaif.")
        for name in ("steps", "batch_size", "mini_batches", "ppo_epochs", "response_length", "max_prompt_length"):
            if getattr(self, name) < 1:
                raise RlaifError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.batch_size % self.mini_batches:
            raise RlaifError(f"batch_size {self.batch_size} must be a multiple of mini_batches {self.mini_batches}.")
        if self.temperature <= 0 or self.kl_coef < 0 or self.learning_rate <= 0:
            raise RlaifError("temperature and learning_rate must be > 0 and kl_coef >= 0.")


def build_reward_fn(config: PPORunConfig) -> RewardFn:
    """The text reward function the config asks for: a reward model or the d-RLAIF scorer."""
    if config.reward_model:
        from rlaif.ppo_rewards import RewardModelFunction  # noqa: PLC0415

        return RewardModelFunction(config.reward_model)
    from rlaif.drlaif import DRLAIFScorer, ScoreConfig  # noqa: PLC0415 (heavy; only for --d-rlaif)

    return DRLAIFScorer(
        ScoreConfig(model=config.feedback_model, constitution=config.constitution, principle=config.principle)
    )


def load_policy_tokenizer(policy: str) -> Any:
    """The policy's tokenizer, with a pad token (EOS if it has none; TRL masks pad ids)."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    try:
        tokenizer = AutoTokenizer.from_pretrained(policy)
    except (OSError, ValueError) as err:
        raise RlaifError(f"Cannot load the policy tokenizer from {policy!r}: {err}. Give a model directory.") from err
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise RlaifError(f"Policy {policy} has neither a pad nor an EOS token; add a pad token to its tokenizer.")
        logger.warning("The policy tokenizer has no pad token; using EOS %r (EOS inside prompts is then masked).",
                       tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encode_prompt(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    if chat:
        messages = [{"role": "user", "content": prompt}]
        encoded = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
        return list(encoded["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def build_prompt_dataset(
    prompts: list[str], tokenizer: Any, max_prompt_length: int, plain: bool = False
) -> tuple[Any, dict[tuple, str]]:
    """Prompts tokenized (chat template if the policy has one) and left-padded to ONE length.

    The fixed length is what lets `TextRewardModel` split prompt from response: TRL's
    context length is the padded query width. Returns the dataset (`input_ids` only)
    and the map from each padded row (pad ids as 0, as TRL's `get_reward` passes them)
    to its prompt text. Prompts over `max_prompt_length` tokens keep their end, as
    TRL's GRPO does, since the end holds the question and the generation prompt.
    """
    from datasets import Dataset  # noqa: PLC0415

    chat = bool(tokenizer.chat_template) and not plain
    if not chat and not plain:
        logger.warning("The policy tokenizer has no chat template: prompts are fed as plain text.")
    encoded = [encode_prompt(tokenizer, p, chat) for p in prompts]
    long = sum(len(ids) > max_prompt_length for ids in encoded)
    if long:
        logger.warning("%d of %d prompts exceed max_prompt_length=%d tokens; their beginnings are cut off.",
                       long, len(encoded), max_prompt_length)
    encoded = [ids[-max_prompt_length:] for ids in encoded]
    width, pad = max(len(ids) for ids in encoded), tokenizer.pad_token_id
    rows = [[pad] * (width - len(ids)) + ids for ids in encoded]
    texts: dict[tuple, str] = {}
    for row, prompt in zip(rows, prompts, strict=True):
        texts.setdefault(tuple(0 if t == pad else t for t in row), prompt)
    if len(set(prompts)) > len(texts):
        logger.warning("%d distinct prompts tokenize identically to another; the reward sees the first one's text.",
                       len(set(prompts)) - len(texts))
    return Dataset.from_dict({"input_ids": rows}), texts


def load_models(config: PPORunConfig, tokenizer: Any, context_length: int) -> tuple[Any, Any, Any]:
    """Policy, reference policy and value model (the policy's weights + a fresh scalar head)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: PLC0415
    from trl.trainer.reward_trainer import suppress_seqcls_warning  # noqa: PLC0415

    try:
        policy = AutoModelForCausalLM.from_pretrained(config.policy)
        ref_policy = AutoModelForCausalLM.from_pretrained(config.policy)
        with suppress_seqcls_warning():  # the LM head is dropped and a value head made, as intended
            value_model = AutoModelForSequenceClassification.from_pretrained(config.policy, num_labels=1)
    except (OSError, ValueError) as err:
        raise RlaifError(f"Cannot load policy {config.policy!r} as a causal LM: {err}.") from err
    limit = getattr(policy.config, "max_position_embeddings", None)
    if limit and context_length + config.response_length > limit:
        raise RlaifError(
            f"Prompts of {context_length} tokens + responses of {config.response_length} exceed the policy's context "
            f"of {limit}; lower --max-prompt-length or --response-length."
        )
    for model in (policy, ref_policy, value_model):
        model.config.pad_token_id = tokenizer.pad_token_id
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    return policy, ref_policy, value_model


def trl_config(config: PPORunConfig) -> Any:
    """TRL's PPOConfig for our settings (no checkpoints, no reporting, bf16 only on a GPU that has it)."""
    import torch  # noqa: PLC0415
    from trl.experimental.ppo import PPOConfig  # noqa: PLC0415

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return PPOConfig(
        output_dir=config.output_dir, per_device_train_batch_size=config.batch_size,
        num_mini_batches=config.mini_batches, num_ppo_epochs=config.ppo_epochs,
        total_episodes=config.steps * config.batch_size, learning_rate=config.learning_rate,
        kl_coef=config.kl_coef, response_length=config.response_length, temperature=config.temperature,
        stop_token="eos" if config.stop_at_eos else None, missing_eos_penalty=config.missing_eos_penalty,
        local_rollout_forward_batch_size=config.batch_size, num_sample_generations=0, seed=config.seed,
        bf16=bf16, fp16=False, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        sft_model_path=config.policy, reward_model_path=config.reward_model or f"d-rlaif:{config.feedback_model}",
    )


PLOTTED = (("reward_mean", "mean reward"), ("kl", "KL to reference"), ("response_length_mean", "response tokens"))


def plot_ppo_log(log_path: str | Path, png_path: str | Path) -> Path | None:
    """Plot reward, KL and response length per step; None (with a warning) without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        logger.warning("matplotlib is not installed, so no %s: pip install 'rlaif[plot]'.", png_path)
        return None
    rows = read_rows(log_path)
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(12, 3.2))
    for ax, (key, title) in zip(axes, PLOTTED, strict=True):
        points = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
        ax.plot([step for step, _ in points], [value for _, value in points], marker="o", markersize=3)
        ax.set_title(title)
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return Path(png_path)


def read_prompts(config: PPORunConfig) -> list[str]:
    records = read_records(config.prompts, ["prompt"], column_map=parse_column_map(config.column_map))
    if len(records) < config.batch_size:
        raise RlaifError(
            f"{config.prompts} has {len(records)} prompts, fewer than batch_size {config.batch_size}; "
            "lower --batch-size or add prompts."
        )
    return [record["prompt"] for record in records]


def run_ppo(config: PPORunConfig, reward_fn: RewardFn | None = None) -> dict[str, Any]:
    """Train `config.policy` with PPO against `reward_fn` (default: the one the config names).

    `reward_fn` has TRL's reward signature `(prompts, completions, **kwargs) -> list[float]`.
    Returns the output paths, the number of steps and the first and last mean reward.
    """
    from transformers import set_seed  # noqa: PLC0415
    from trl.experimental.ppo import PPOTrainer  # noqa: PLC0415

    from rlaif.ppo_rewards import PPOLogCallback, TextRewardModel  # noqa: PLC0415

    config.validate()
    if is_default(config.policy):  # the embedded Gemma 3 270M, converted once and cached
        config = dataclasses.replace(config, policy=str(default_model_dir()))
    prompts = read_prompts(config)
    reward_fn = reward_fn or build_reward_fn(config)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(config.seed)
    tokenizer = load_policy_tokenizer(config.policy)
    dataset, prompt_texts = build_prompt_dataset(prompts, tokenizer, config.max_prompt_length, config.plain_prompts)
    context_length = len(dataset[0]["input_ids"])
    policy, ref_policy, value_model = load_models(config, tokenizer, context_length)
    reward_model = TextRewardModel(reward_fn, tokenizer, context_length, prompt_texts)
    log = PPOLogCallback(out / "ppo_log.jsonl", reward_model)
    trainer = PPOTrainer(
        args=trl_config(config), processing_class=tokenizer, model=policy, ref_model=ref_policy,
        reward_model=reward_model, train_dataset=dataset, value_model=value_model, callbacks=[log],
    )
    trainer.train()
    trainer.save_model(str(out / "policy"))
    tokenizer.save_pretrained(out / "policy")
    meta = {"config": asdict(config), "context_length": context_length, "rlaif_version": __version__}
    write_json(meta_path(out / "ppo_log.jsonl"), meta)
    plot = plot_ppo_log(out / "ppo_log.jsonl", out / "ppo_curve.png")
    rewards = [row["reward_mean"] for row in log.rows]
    return {
        "policy_dir": str(out / "policy"), "log": str(out / "ppo_log.jsonl"), "plot": str(plot) if plot else None,
        "steps": len(rewards), "reward_first": rewards[0] if rewards else None,
        "reward_last": rewards[-1] if rewards else None,
    }
