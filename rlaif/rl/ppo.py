"""RL from AI feedback with TRL's PPO, rewarded by any text reward function.

`run_ppo` trains a causal LM policy with `trl.experimental.ppo.PPOTrainer` (TRL
1.12, the `ppo` extra: TRL removed PPO in 1.13): value model initialised from the
policy's weights, reference policy a frozen copy of it (with LoRA: the policy with
its adapters disabled, and the value model gets adapters too), rewards from the
reward `rlaif.rl.reward_functions.load_reward` names through `TextRewardModel` (see
rlaif/rl/rewards.py for why an adapter module and not a trainer subclass). It writes
the trained policy (with a model card), `ppo_log.jsonl` (reward / KL / response
length per PPO step) and `ppo_curve.png`; checkpoints every `save_steps` updates
make a killed run resumable (rlaif/rl/ppo_trainer.py).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlaif import __version__
from rlaif.errors import RlaifError
from rlaif.io import parse_column_map, read_records
from rlaif.rl.common import load_policy_tokenizer
from rlaif.rl.reward_functions import RewardFn, RewardSettings, load_reward

__all__ = ["PPORunConfig", "build_prompt_dataset", "check_ppo_trl", "load_policy_tokenizer", "ppo_trl_installed",
           "run_ppo"]

logger = logging.getLogger(__name__)

LOG_NAME, CURVE_NAME = "ppo_log.jsonl", "ppo_curve.png"
PANELS = (("reward_mean", "mean reward"), ("kl", "KL to reference"), ("response_length_mean", "response tokens"))
PPO_EXTRA_HINT = "pip install 'rlaif[ppo]' (from a clone: pip install -e '.[ppo]')"


def check_ppo_trl() -> None:
    """Fail in one line, before importing TRL, when the installed TRL has no PPOTrainer (TRL >= 1.13)."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    from packaging.version import Version  # noqa: PLC0415

    try:
        installed = version("trl")
    except PackageNotFoundError:
        installed = None
    if installed is None or Version(installed) >= Version("1.13"):
        found = f"TRL {installed} is installed" if installed else "TRL is not installed"
        raise RlaifError(f"rlaif ppo needs the ppo extra: TRL removed PPOTrainer in 1.13 and {found}; "
                         f"{PPO_EXTRA_HINT} in its own environment, or use rlaif grpo.")


def ppo_trl_installed() -> bool:
    """Whether this environment's TRL has PPOTrainer (the ppo extra), without importing TRL."""
    try:
        check_ppo_trl()
    except RlaifError:
        return False
    return True


@dataclass
class PPORunConfig(RewardSettings):
    """Settings of one `rlaif ppo` run; CLI flags match the fields one to one."""

    prompts: str = field(metadata={"help": "Prompt file (JSONL/CSV/Parquet/saved dataset) with a `prompt` column."})
    policy: str = field(metadata={"help": "Policy to train: `default` (the embedded Gemma 3 270M), a causal LM directory or a Hugging Face id."})
    output_dir: str = field(metadata={"help": "Folder for the trained policy (policy/), ppo_log.jsonl, ppo_curve.png, checkpoints/."})
    column_map: tuple[str, ...] = field(default=(), metadata={"help": "Map the prompt column: prompt=COLUMN."})
    steps: int = field(default=20, metadata={"help": "PPO updates; each generates and scores one batch."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per PPO update (per device)."})
    mini_batches: int = field(default=1, metadata={"help": "Mini-batches each update's batch is split into."})
    micro_batch_size: int | None = field(
        default=None,
        metadata={"help": "Prompts per forward/backward pass, gradients accumulated over the batch (less memory); "
                          "default: 2 when --mini-batches is 1 and the batch is even, else the whole batch. "
                          "Needs --mini-batches 1."},
    )
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
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on all linear layers of policy and value model; 0 = full fine-tuning."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)."})
    save_steps: int = field(default=10, metadata={"help": "Checkpoint every this many updates (what --resume continues from)."})
    seed: int = field(default=42, metadata={"help": "Random seed (sampling, value head, data order)."})

    def validate(self) -> None:
        self.check_reward()
        for name in ("steps", "batch_size", "mini_batches", "ppo_epochs", "response_length", "max_prompt_length",
                     "save_steps"):
            if getattr(self, name) < 1:
                raise RlaifError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.batch_size % self.mini_batches:
            raise RlaifError(f"batch_size {self.batch_size} must be a multiple of mini_batches {self.mini_batches}.")
        micro = self.micro()
        if micro < 1 or self.batch_size % micro:
            raise RlaifError(f"batch_size {self.batch_size} must be a multiple of micro_batch_size {micro}.")
        if micro < self.batch_size and self.mini_batches > 1:
            raise RlaifError("--micro-batch-size needs --mini-batches 1: TRL's PPO accumulates gradients over the "
                             "whole batch, so mini-batches would no longer be one optimiser step each.")
        if self.temperature <= 0 or self.kl_coef < 0 or self.learning_rate <= 0:
            raise RlaifError("temperature and learning_rate must be > 0 and kl_coef >= 0.")
        if self.lora_r < 0 or self.lora_alpha <= 0:
            raise RlaifError("--lora-r must be >= 0 (0 = full fine-tuning) and --lora-alpha > 0.")

    def micro(self) -> int:
        """Prompts per forward/backward pass. The default, 2, gives the same update as the whole batch (TRL
        accumulates the gradients) in less memory: LoRA on the embedded policy peaked at 4.0 GB with it and
        6.6 GB with the whole batch of 8 (benchmarks/rl_memory.py)."""
        if self.micro_batch_size:
            return self.micro_batch_size
        return 2 if self.mini_batches == 1 and self.batch_size % 2 == 0 else self.batch_size


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
        logger.info("The policy tokenizer has no chat template (a base model): prompts are fed as plain text.")
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
    """Policy, reference policy (None with LoRA: the adapter-disabled policy) and value model.

    The value model is the policy's weights with a fresh scalar head; with LoRA it gets
    its own adapters (and a trained head) instead of full fine-tuning.
    """
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: PLC0415
    from trl.trainer.reward_trainer import suppress_seqcls_warning  # noqa: PLC0415

    from rlaif.rl.common import check_context, lora_config  # noqa: PLC0415

    try:
        policy = AutoModelForCausalLM.from_pretrained(config.policy, dtype=torch.float32)
        ref_policy = None if config.lora_r else AutoModelForCausalLM.from_pretrained(config.policy, dtype=torch.float32)
        with suppress_seqcls_warning():  # the LM head is dropped and a value head made, as intended
            value_model = AutoModelForSequenceClassification.from_pretrained(config.policy, num_labels=1,
                                                                              dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise RlaifError(f"Cannot load policy {config.policy!r} as a causal LM: {err}.") from err
    check_context(policy, context_length, config.response_length)
    for model in (policy, ref_policy, value_model):
        if model is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    if config.lora_r:
        from peft import get_peft_model  # noqa: PLC0415 (lora_config has checked that peft is there)

        value_model = get_peft_model(value_model, lora_config(config.lora_r, config.lora_alpha, task_type="SEQ_CLS"))
    return policy, ref_policy, value_model


def trl_config(config: PPORunConfig, steps_left: int) -> Any:
    """TRL's PPOConfig for the updates still to do (checkpoints every save_steps, no reporting)."""
    from trl.experimental.ppo import PPOConfig  # noqa: PLC0415

    from rlaif.rl.checkpoints import checkpoint_root  # noqa: PLC0415
    from rlaif.rl.common import use_bf16  # noqa: PLC0415

    micro = config.micro()
    return PPOConfig(
        output_dir=str(checkpoint_root(config.output_dir)), per_device_train_batch_size=micro,
        gradient_accumulation_steps=config.batch_size // micro,
        num_mini_batches=config.mini_batches, num_ppo_epochs=config.ppo_epochs,
        total_episodes=steps_left * config.batch_size, learning_rate=config.learning_rate,
        kl_coef=config.kl_coef, response_length=config.response_length, temperature=config.temperature,
        stop_token="eos" if config.stop_at_eos else None, missing_eos_penalty=config.missing_eos_penalty,
        local_rollout_forward_batch_size=micro, num_sample_generations=0, seed=config.seed,
        bf16=use_bf16(), fp16=False, report_to="none", save_strategy="steps", save_steps=config.save_steps,
        logging_steps=1, disable_tqdm=True, sft_model_path=config.policy,
        reward_model_path=config.reward_model or config.reward_fn or f"d-rlaif:{config.feedback_model}",
    )


def read_prompts(config: PPORunConfig) -> list[str]:
    records = read_records(config.prompts, ["prompt"], column_map=parse_column_map(config.column_map))
    if len(records) < config.batch_size:
        raise RlaifError(
            f"{config.prompts} has {len(records)} prompts, fewer than batch_size {config.batch_size}; "
            "lower --batch-size or add prompts."
        )
    return [record["prompt"] for record in records]


def ppo_row(logs: dict[str, Any], reward_model: Any) -> dict[str, Any] | None:
    """The log row of one PPO update from TRL's metrics and the rollouts the adapter scored."""
    if "objective/scores" not in logs:
        return None
    lengths = [n for batch in reward_model.pop_batches() for n in batch["lengths"]]
    return {
        "episode": logs.get("episode"), "reward_mean": logs["objective/scores"], "kl": logs["objective/kl"],
        "response_length_mean": sum(lengths) / len(lengths) if lengths else None,
        "rlhf_reward": logs.get("objective/rlhf_reward"), "entropy": logs.get("objective/entropy"),
        "policy_loss": logs.get("loss/policy_avg"), "value_loss": logs.get("loss/value_avg"),
        "eos_count": logs.get("val/num_eos_tokens"), "lr": logs.get("lr"),
    }


def run_ppo(config: PPORunConfig, reward_fn: RewardFn | None = None, resume: bool = False,
            overwrite: bool = False) -> dict[str, Any]:
    """Train `config.policy` with PPO against `reward_fn` (default: the one the config names).

    `reward_fn` has TRL's reward signature `(prompts, completions, **kwargs) -> list[float]`.
    `resume` continues the run in `output_dir` from its newest complete checkpoint.
    Returns whole-run figures (steps, first and last mean reward, training seconds) and paths.
    """
    from rlaif.rl.checkpoints import open_rl_run  # noqa: PLC0415

    check_ppo_trl()
    config.validate()
    out = Path(config.output_dir)
    with open_rl_run(out, out / LOG_NAME, config, resume=resume, overwrite=overwrite, stage="ppo") as (run, checkpoint):
        if run.old_meta.get("status") == "done" and (out / "policy").is_dir():
            return {**run.old_meta.get("result", {}), "already_done": True}
        prompts = read_prompts(config)
        reward = reward_fn if reward_fn is not None else load_reward(config)
        return _train(config, run, checkpoint, prompts, reward)


def _train(config: PPORunConfig, run: Any, checkpoint: Path | None, prompts: list[str], reward: RewardFn) -> dict[str, Any]:
    from transformers import set_seed  # noqa: PLC0415

    from rlaif.rl import common  # noqa: PLC0415
    from rlaif.rl.checkpoints import checkpoint_step, log_summary  # noqa: PLC0415
    from rlaif.rl.ppo_trainer import ResumablePPOTrainer  # noqa: PLC0415
    from rlaif.rl.rewards import TextRewardModel  # noqa: PLC0415
    from rlaif.rl.step_log import StepLog  # noqa: PLC0415

    out, log = Path(config.output_dir), Path(config.output_dir) / LOG_NAME
    policy_path = common.resolve_policy(config.policy)
    set_seed(config.seed)
    tokenizer = load_policy_tokenizer(policy_path)
    dataset, prompt_texts = build_prompt_dataset(prompts, tokenizer, config.max_prompt_length, config.plain_prompts)
    context_length = len(dataset[0]["input_ids"])
    policy, ref_policy, value_model = load_models(_with_policy(config, policy_path), tokenizer, context_length)
    reward_model = TextRewardModel(reward, tokenizer, context_length, prompt_texts)
    done = checkpoint_step(checkpoint) if checkpoint else 0
    previous = log_summary(log) if checkpoint else {}
    step_log = StepLog(run, lambda logs: ppo_row(logs, reward_model), previous.get("train_seconds") or 0.0)
    run.start(policy_path, algorithm="ppo", rlaif_version=__version__, context_length=context_length,
              resumed_from=[*run.old_meta.get("resumed_from", []), *([done] if checkpoint else [])])
    peft = common.lora_config(config.lora_r, config.lora_alpha) if config.lora_r else None
    trainer = ResumablePPOTrainer(
        args=trl_config(_with_policy(config, policy_path), max(config.steps - done, 0)), processing_class=tokenizer,
        model=policy, ref_model=ref_policy, reward_model=reward_model, train_dataset=dataset, value_model=value_model,
        callbacks=[step_log], peft_config=peft, total_steps=config.steps, resume_from=checkpoint,
    )
    if done < config.steps:
        trainer.train()
    trained = trainer.accelerator.unwrap_model(trainer.model).policy
    paths = common.save_policy(trained, tokenizer, out / "policy")
    summary = {**log_summary(log), "resumed_from": run.meta.get("resumed_from") or None,
               "reference": "adapter-disabled base" if trainer.ref_model is None else "separate copy"}
    lora = {"r": config.lora_r, "alpha": config.lora_alpha} if config.lora_r else None
    common.write_policy_card(out / "policy", algorithm="ppo", base_model=config.policy,
                             reward=common.describe_reward(config), summary=summary, config=asdict(config), lora=lora)
    plot = common.plot_log(log, out / CURVE_NAME, PANELS, xlabel="PPO step")
    result = {**paths, **summary, "log": str(log), "plot": str(plot) if plot else None}
    run.finish(result=result, context_length=context_length)
    import shutil  # noqa: PLC0415

    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the policy is saved; checkpoints are model-sized
    return result


def _with_policy(config: PPORunConfig, policy_path: str) -> PPORunConfig:
    import dataclasses  # noqa: PLC0415

    return dataclasses.replace(config, policy=policy_path)
