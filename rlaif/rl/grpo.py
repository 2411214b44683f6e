"""RL from AI feedback with TRL's GRPO or RLOO, rewarded by any text reward.

`run_grpo` trains a causal LM policy with `trl.GRPOTrainer` (`--algorithm grpo`,
any of GRPOConfig's `loss_type`s) or `trl.RLOOTrainer` (`--algorithm rloo`: the
leave-one-out baseline, KL folded into the reward). Per step it samples
`num_generations` completions for each of `prompts_per_step` prompts, scores
them with the reward `rlaif.rl.reward_functions.load_reward` names, and updates
the policy on the group-relative advantages.

The reference policy (for the KL term, `beta` > 0) is a second copy of the policy
for full fine-tuning; with LoRA (`lora_r` > 0) TRL computes it with the adapters
disabled, so no second copy is made. Checkpoints every `save_steps` steps make a
killed run resumable (`rlaif.rl.checkpoints`). The pieces (`trl_args`,
`build_prompt_dataset`, `trainer_class`) are functions so that trainers built on
GRPO (SCoRe) reuse them.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlaif import __version__
from rlaif.errors import RlaifError
from rlaif.io import parse_column_map, read_records
from rlaif.rl.reward_functions import PROMPT_TEXT, CheckedReward, RewardFn, RewardSettings, load_reward
from rlaif.text import PROMPT_FORMATS

logger = logging.getLogger(__name__)

# GRPOConfig.loss_type values (the same in TRL 1.12 to 1.16); "dapo" is TRL's default.
LOSSES = ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo")
ALGORITHMS = ("grpo", "rloo")
SCALE_REWARDS = ("group", "batch", "none")
LOG_NAME, CURVE_NAME = "grpo_log.jsonl", "grpo_curve.png"
PANELS = (("reward_mean", "mean reward"), ("kl", "KL to reference"), ("response_length_mean", "completion tokens"))


@dataclass
class GRPORunConfig(RewardSettings):
    """Settings of one `rlaif grpo` run; CLI flags match the fields one to one."""

    prompts: str = field(metadata={"help": "Prompt file (JSONL/CSV/Parquet/saved dataset) with a `prompt` column."})
    policy: str = field(metadata={"help": "Policy to train: `default` (the embedded Gemma 3 270M), a causal LM directory or a Hugging Face id."})
    output_dir: str = field(metadata={"help": "Folder for the trained policy (policy/), grpo_log.jsonl, grpo_curve.png, checkpoints/."})
    algorithm: str = field(default="grpo", metadata={"help": "grpo (TRL GRPOTrainer) or rloo (TRL RLOOTrainer: leave-one-out baseline)."})
    loss: str = field(default="dapo", metadata={"help": "GRPO loss (TRL's GRPOConfig.loss_type); luspo runs at sequence level."})
    scale_rewards: str = field(default="group", metadata={"help": "GRPO advantage scaling: by the group's std, the batch's, or none (Dr. GRPO)."})
    column_map: tuple[str, ...] = field(default=(), metadata={"help": "Map the prompt column: prompt=COLUMN."})
    steps: int = field(default=20, metadata={"help": "Optimiser steps; each samples and scores one batch."})
    prompts_per_step: int = field(default=2, metadata={"help": "Prompts per step (per device)."})
    num_generations: int = field(default=4, metadata={"help": "Completions sampled per prompt (the group); at least 2."})
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate (LoRA usually wants 1e-5 to 1e-4)."})
    beta: float = field(default=0.04, metadata={"help": "KL coefficient against the reference policy; 0 = no reference model."})
    completion_length: int = field(default=64, metadata={"help": "Maximum new tokens per completion."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the completions."})
    max_prompt_length: int = field(default=256, metadata={"help": "Prompts longer than this many tokens are skipped (with a warning)."})
    prompt_format: str = field(default="auto", metadata={"help": "auto (chat template if the policy has one), chat, or plain 'Human: ... Assistant:' text."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on all linear layers; 0 = full fine-tuning."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)."})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "Recompute activations in the backward pass (less memory, slower)."})
    save_steps: int = field(default=10, metadata={"help": "Checkpoint every this many steps (what --resume continues from)."})
    seed: int = field(default=42, metadata={"help": "Random seed (sampling, LoRA init, data order)."})

    def validate(self) -> None:
        self.check_reward()
        for name in ("steps", "prompts_per_step", "completion_length", "max_prompt_length", "save_steps"):
            if getattr(self, name) < 1:
                raise RlaifError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name, value, allowed in (("algorithm", self.algorithm, ALGORITHMS), ("loss", self.loss, LOSSES),
                                     ("scale_rewards", self.scale_rewards, SCALE_REWARDS),
                                     ("prompt_format", self.prompt_format, PROMPT_FORMATS)):
            if value not in allowed:
                raise RlaifError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, not {value!r}.")
        if self.algorithm == "rloo" and (self.loss != "dapo" or self.scale_rewards != "group"):
            raise RlaifError("--loss and --scale-rewards are GRPO's; RLOO has one loss and its leave-one-out "
                             "baseline: drop them or use --algorithm grpo.")
        if self.num_generations < 2:
            raise RlaifError(f"num_generations must be at least 2 (the group baseline needs two), got {self.num_generations}.")
        if self.lora_r < 0 or self.lora_alpha <= 0:
            raise RlaifError("--lora-r must be >= 0 (0 = full fine-tuning) and --lora-alpha > 0.")
        if self.temperature <= 0 or self.learning_rate <= 0 or self.beta < 0:
            raise RlaifError("temperature and learning_rate must be > 0 and beta >= 0.")


def read_prompts(path: str, column_map: tuple[str, ...], need: int) -> list[str]:
    records = read_records(path, ["prompt"], column_map=parse_column_map(column_map))
    if len(records) < need:
        raise RlaifError(f"{path} has {len(records)} prompts, fewer than the {need} one step needs; "
                         "lower --prompts-per-step or add prompts.")
    return [record["prompt"] for record in records]


def prompt_token_count(tokenizer: Any, prompt: Any) -> int:
    if isinstance(prompt, list):
        encoded = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)
        return len(encoded["input_ids"])
    return len(tokenizer(prompt)["input_ids"])


def build_prompt_dataset(prompts: list[str], tokenizer: Any, prompt_format: str, max_prompt_length: int,
                         need: int) -> tuple[Any, int]:
    """TRL's prompt data set: `prompt` (chat messages, or the plain rendered text) and `prompt_text`.

    `prompt_text` is the prompt as the user wrote it, which rlaif's rewards read. Prompts
    over `max_prompt_length` tokens are skipped with a warning (GRPO has no prompt
    truncation). Returns the data set and its longest prompt in tokens.
    """
    from datasets import Dataset  # noqa: PLC0415

    from rlaif.text import render_prompt, resolve_prompt_format, to_messages  # noqa: PLC0415

    fmt = resolve_prompt_format(tokenizer, prompt_format)
    if fmt == "plain" and prompt_format == "auto":
        logger.info("The policy tokenizer has no chat template (a base model): prompts are fed as 'Human: ... Assistant:' text.")
    rows = [(to_messages(p) if fmt == "chat" else render_prompt(tokenizer, p, "plain"), p) for p in prompts]
    lengths = [prompt_token_count(tokenizer, shown) for shown, _ in rows]
    kept = [(row, n) for row, n in zip(rows, lengths, strict=True) if n <= max_prompt_length]
    if len(kept) < len(rows):
        logger.warning("Skipped %d of %d prompts longer than max_prompt_length=%d tokens.",
                       len(rows) - len(kept), len(rows), max_prompt_length)
    if len(kept) < need:
        raise RlaifError(f"Only {len(kept)} prompts fit max_prompt_length={max_prompt_length} tokens, fewer than "
                         f"the {need} one step needs; raise --max-prompt-length or lower --prompts-per-step.")
    data = {"prompt": [shown for (shown, _), _ in kept], PROMPT_TEXT: [text for (_, text), _ in kept]}
    return Dataset.from_dict(data), max(n for _, n in kept)


def trl_args(config: GRPORunConfig, output_dir: str | Path, **overrides: Any) -> Any:
    """TRL's GRPOConfig (or RLOOConfig) for our settings: checkpoints every save_steps, no reporting."""
    from trl import GRPOConfig, RLOOConfig  # noqa: PLC0415

    from rlaif.rl.common import use_bf16  # noqa: PLC0415

    common = dict(
        output_dir=str(output_dir), per_device_train_batch_size=config.prompts_per_step * config.num_generations,
        num_generations=config.num_generations, max_steps=config.steps, learning_rate=config.learning_rate,
        beta=config.beta, temperature=config.temperature, max_completion_length=config.completion_length,
        gradient_checkpointing=config.gradient_checkpointing, seed=config.seed, bf16=use_bf16(), fp16=False,
        logging_steps=1, save_strategy="steps", save_steps=config.save_steps, save_total_limit=None,
        report_to="none", disable_tqdm=True, remove_unused_columns=False,
    )
    if config.algorithm == "rloo":
        return RLOOConfig(**{**common, **overrides})
    level = "sequence" if config.loss == "luspo" else "token"  # LUSPO is a sequence-level loss (TRL warns otherwise)
    return GRPOConfig(**{**common, "loss_type": config.loss, "scale_rewards": config.scale_rewards,
                         "importance_sampling_level": level, **overrides})


def trainer_class(algorithm: str) -> type:
    """TRL's trainer for the algorithm, with checkpoints marked complete after each save."""
    from trl import GRPOTrainer, RLOOTrainer  # noqa: PLC0415

    from rlaif.rl.checkpoints import MarkCompleteCheckpoints  # noqa: PLC0415

    base = RLOOTrainer if algorithm == "rloo" else GRPOTrainer
    return type(f"Rlaif{base.__name__}", (MarkCompleteCheckpoints, base), {})


def grpo_row(logs: dict[str, Any]) -> dict[str, Any] | None:
    """The log row of one GRPO / RLOO step from TRL's metrics (None for other logs)."""
    if "reward" not in logs:
        return None
    return {
        "reward_mean": logs["reward"], "reward_std": logs.get("reward_std"), "kl": logs.get("kl"),
        "response_length_mean": logs.get("completions/mean_length"),
        "clipped_ratio": logs.get("completions/clipped_ratio"), "loss": logs.get("loss"),
        "entropy": logs.get("entropy"), "frac_reward_zero_std": logs.get("frac_reward_zero_std"),
        "grad_norm": logs.get("grad_norm"), "lr": logs.get("learning_rate"),
    }


def as_reward(reward_fn: RewardFn | None, config: GRPORunConfig) -> RewardFn:
    if reward_fn is None:
        return load_reward(config)
    if isinstance(reward_fn, CheckedReward):
        return reward_fn
    return CheckedReward(reward_fn, name=getattr(reward_fn, "__name__", "reward"), plain_text=False)


def run_grpo(config: GRPORunConfig, reward_fn: RewardFn | None = None, resume: bool = False,
             overwrite: bool = False) -> dict[str, Any]:
    """Train `config.policy` with GRPO / RLOO against `reward_fn` (default: the reward the config names).

    `reward_fn` has TRL's reward signature `(prompts, completions, **kwargs) -> list[float]`.
    `resume` continues the run in `output_dir` from its newest complete checkpoint. Returns
    whole-run figures (steps, first and last mean reward, training seconds) and the paths.
    """
    from rlaif.rl.checkpoints import open_rl_run  # noqa: PLC0415

    config.validate()
    out = Path(config.output_dir)
    log = out / LOG_NAME
    with open_rl_run(out, log, config, resume=resume, overwrite=overwrite, stage="grpo") as (run, checkpoint):
        if run.old_meta.get("status") == "done" and (out / "policy").is_dir():
            return {**run.old_meta.get("result", {}), "already_done": True}
        prompts = read_prompts(config.prompts, config.column_map, config.prompts_per_step)
        reward = as_reward(reward_fn, config)
        return _train(config, run, checkpoint, prompts, reward)


def _train(config: GRPORunConfig, run: Any, checkpoint: Path | None, prompts: list[str], reward: RewardFn) -> dict[str, Any]:
    from transformers import set_seed  # noqa: PLC0415

    from rlaif.rl import common  # noqa: PLC0415
    from rlaif.rl.checkpoints import checkpoint_root, checkpoint_step, log_summary  # noqa: PLC0415
    from rlaif.rl.step_log import StepLog  # noqa: PLC0415

    out, log = Path(config.output_dir), Path(config.output_dir) / LOG_NAME
    policy = common.resolve_policy(config.policy)
    set_seed(config.seed)
    tokenizer = common.load_policy_tokenizer(policy)
    tokenizer.padding_side = "left"
    dataset, longest = build_prompt_dataset(prompts, tokenizer, config.prompt_format, config.max_prompt_length,
                                            config.prompts_per_step)
    model = common.load_policy_model(policy)
    common.check_context(model, longest, config.completion_length)
    peft = common.lora_config(config.lora_r, config.lora_alpha) if config.lora_r else None
    resumed_at = checkpoint_step(checkpoint) if checkpoint else None
    previous = log_summary(log) if checkpoint else {}
    step_log = StepLog(run, grpo_row, seconds_before=previous.get("train_seconds") or 0.0)
    run.start(policy, algorithm=config.algorithm, rlaif_version=__version__,
              resumed_from=[*run.old_meta.get("resumed_from", []), *([resumed_at] if checkpoint else [])])
    trainer = trainer_class(config.algorithm)(
        model=model, reward_funcs=[reward], args=trl_args(config, checkpoint_root(out)), train_dataset=dataset,
        processing_class=tokenizer, peft_config=peft, callbacks=[step_log],
    )
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    paths = common.save_policy(trained, tokenizer, out / "policy")
    summary = {**log_summary(log), "resumed_from": run.meta.get("resumed_from") or None,
               "reference": _reference_kind(trainer)}
    lora = {"r": config.lora_r, "alpha": config.lora_alpha} if config.lora_r else None
    common.write_policy_card(out / "policy", algorithm=config.algorithm, base_model=config.policy,
                             reward=common.describe_reward(config), summary=summary, config=asdict(config), lora=lora)
    plot = common.plot_log(log, out / CURVE_NAME, PANELS)
    result = {**paths, **summary, "log": str(log), "plot": str(plot) if plot else None}
    run.finish(result=result)
    _drop_checkpoints(checkpoint_root(out))
    return result


def _reference_kind(trainer: Any) -> str:
    """What the KL term compares against: nothing (beta = 0), the adapter-disabled base, or a second copy."""
    if trainer.beta == 0.0:
        return "none (beta = 0)"
    return "adapter-disabled base" if trainer.ref_model is None else "separate copy"


def _drop_checkpoints(root: Path) -> None:
    """A finished run needs no checkpoints (its policy is saved); they are the size of the model and optimiser."""
    import shutil  # noqa: PLC0415

    shutil.rmtree(root, ignore_errors=True)
