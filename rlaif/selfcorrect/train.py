"""`train_self_correct`: SCoRe stage I then stage II on TRL's GRPOTrainer, as one resumable run.

The run trains `stage1_steps` optimiser steps of stage I (Eq. 3), then `stage2_steps`
of stage II (Eq. 4), one trainer, one log, one checkpoint series: `--resume`
continues either stage from the newest complete checkpoint (`rlaif.rl.checkpoints`),
and the reference policy is the base model throughout. Outputs (OUT = --output-dir):

    OUT/policy/                  the trained policy (plain model directory, README.md model card)
    OUT/policy-adapter/          with --lora-r: the adapter alone
    OUT/score_log.jsonl          one row per step: stage, both attempts' mean reward, KL, ...
    OUT/score_curve.png          both attempts' reward per step, the stage boundary marked

The reward is GSM8K exact match against the problems' `answer` column unless a
reward model, d-RLAIF or a reward function is named (`rlaif.rl.reward_functions`).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rlaif import __version__
from rlaif.errors import RlaifError
from rlaif.rl.reward_functions import CheckedReward, RewardFn, RewardSettings, load_reward
from rlaif.selfcorrect.gsm8k import exact_match_reward, read_problems
from rlaif.selfcorrect.prompts import FIRST_INSTRUCTIONS, INSTRUCTIONS, first_prompt, resolve_instruction
from rlaif.text import PROMPT_FORMATS

logger = logging.getLogger(__name__)

LOG_NAME, CURVE_NAME = "score_log.jsonl", "score_curve.png"


@dataclass
class SelfCorrectTrainConfig(RewardSettings):
    """Settings of one `rlaif train-self-correct` run; CLI flags match the fields one to one."""

    problems: str = field(metadata={"help": "Training problems: GSM8K's question/answer JSONL (or prompt/answer)."})
    policy: str = field(metadata={"help": "Policy to train: `default` (the embedded Gemma 3 270M), a causal LM directory or a Hugging Face id."})
    output_dir: str = field(metadata={"help": "Folder for policy/, score_log.jsonl, score_curve.png, checkpoints/."})
    column_map: tuple[str, ...] = field(default=(), metadata={"help": "Map a field: question=COLUMN or answer=COLUMN."})
    limit: int | None = field(default=None, metadata={"help": "Use only the first N problems."})
    stage1_steps: int = field(default=10, metadata={"help": "Optimiser steps of stage I (train attempt 2, keep attempt 1 near the base)."})
    stage2_steps: int = field(default=10, metadata={"help": "Optimiser steps of stage II (both attempts, shaped bonus on attempt 2)."})
    prompts_per_step: int = field(default=2, metadata={"help": "Problems per step."})
    num_generations: int = field(default=2, metadata={"help": "Rollouts (attempt pairs) per problem, k >= 2 (the leave-one-out baseline)."})
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate."})
    alpha: float = field(default=10.0, metadata={"help": "Stage II bonus alpha * (r2 - r1) on attempt 2 (tuned for 0/1 rewards)."})
    beta1: float = field(default=0.01, metadata={"help": "KL weight on attempt 2 (stage I) and on both attempts (stage II)."})
    beta2: float = field(default=0.1, metadata={"help": "KL weight on attempt 1 in stage I (0.25 for code in the paper)."})
    completion_length: int = field(default=256, metadata={"help": "Maximum new tokens per attempt."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of both attempts."})
    max_prompt_length: int = field(default=512, metadata={"help": "Problems whose first prompt is longer (tokens) are skipped."})
    prompt_format: str = field(default="auto", metadata={"help": "auto (chat template if the policy has one), chat, or plain 'Human: ... Assistant:' text."})
    instruction: str = field(default="auto", metadata={"help": "Self-correction instruction: math, constitution, the text itself, or auto (math for exact match, constitution otherwise)."})
    first_instruction: str = field(default="auto", metadata={"help": "Before the problem in attempt 1: math, none, the text itself, or auto (math for exact match, none otherwise)."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on all linear layers; 0 = full fine-tuning."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)."})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "Recompute activations in the backward pass (less memory, slower)."})
    save_steps: int = field(default=10, metadata={"help": "Checkpoint every this many steps (what --resume continues from)."})
    seed: int = field(default=42, metadata={"help": "Random seed (sampling, LoRA init, data order)."})

    # What rlaif.rl.grpo.trl_args reads: SCoRe runs GRPO's machinery with its own advantages.
    algorithm: ClassVar[str] = "grpo"
    loss: ClassVar[str] = "dr_grpo"
    scale_rewards: ClassVar[str] = "none"

    @property
    def steps(self) -> int:
        return self.stage1_steps + self.stage2_steps

    @property
    def beta(self) -> float:
        """TRL's beta: non-zero switches the reference policy on; the per-token weights are β1 / β2."""
        return max(self.beta1, self.beta2)

    @property
    def exact_match(self) -> bool:
        return not (self.reward_model or self.d_rlaif or self.reward_fn)

    def instructions(self) -> tuple[str, str]:
        """(self-correction instruction, first-attempt instruction) as text."""
        instruction = self.instruction if self.instruction != "auto" else ("math" if self.exact_match else "constitution")
        first = self.first_instruction if self.first_instruction != "auto" else ("math" if self.exact_match else "none")
        return (resolve_instruction(instruction, INSTRUCTIONS, "--instruction"),
                resolve_instruction(first, FIRST_INSTRUCTIONS, "--first-instruction", allow_empty=True))

    def validate(self) -> None:
        if not self.exact_match:
            self.check_reward()
        for name in ("prompts_per_step", "completion_length", "max_prompt_length", "save_steps"):
            if getattr(self, name) < 1:
                raise RlaifError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.stage1_steps < 0 or self.stage2_steps < 0 or self.steps < 1:
            raise RlaifError("--stage1-steps and --stage2-steps must be >= 0 and not both 0.")
        if self.num_generations < 2:
            raise RlaifError(f"--num-generations must be at least 2 (the leave-one-out baseline), got {self.num_generations}.")
        if self.prompt_format not in PROMPT_FORMATS:
            raise RlaifError(f"--prompt-format must be one of {', '.join(PROMPT_FORMATS)}, not {self.prompt_format!r}.")
        if min(self.alpha, self.beta1, self.beta2) < 0 or self.temperature <= 0 or self.learning_rate <= 0:
            raise RlaifError("alpha, beta1 and beta2 must be >= 0; temperature and learning_rate > 0.")
        if self.lora_r < 0 or self.lora_alpha <= 0:
            raise RlaifError("--lora-r must be >= 0 (0 = full fine-tuning) and --lora-alpha > 0.")
        if self.limit is not None and self.limit < 1:
            raise RlaifError(f"--limit must be at least 1, got {self.limit}.")
        self.instructions()


def resolve_reward(config: SelfCorrectTrainConfig, reward_fn: RewardFn | None) -> RewardFn:
    """The run's reward, checked: the given function, the named source, or GSM8K exact match."""
    if reward_fn is not None:
        if isinstance(reward_fn, CheckedReward):
            return reward_fn
        return CheckedReward(reward_fn, name=getattr(reward_fn, "__name__", "reward"), plain_text=False)
    if config.exact_match:
        return CheckedReward(exact_match_reward, name="exact_match", plain_text=False)
    return load_reward(config)


def train_self_correct(config: SelfCorrectTrainConfig, reward_fn: RewardFn | None = None, resume: bool = False,
                       overwrite: bool = False) -> dict[str, Any]:
    """Train `config.policy` with SCoRe (stage I, then stage II); returns whole-run figures and paths.

    `reward_fn` (TRL's reward signature) replaces the reward the config names; it scores
    each attempt's text on its own. `resume` continues the run in `output_dir`.
    """
    from rlaif.rl.checkpoints import open_rl_run  # noqa: PLC0415

    config.validate()
    out = Path(config.output_dir)
    with open_rl_run(out, out / LOG_NAME, config, resume=resume, overwrite=overwrite,
                     stage="train-self-correct") as (run, checkpoint):
        if run.old_meta.get("status") == "done" and (out / "policy").is_dir():
            return {**run.old_meta.get("result", {}), "already_done": True}
        problems = read_problems(config.problems, config.column_map, config.limit)
        if len(problems) < config.prompts_per_step:
            raise RlaifError(f"{config.problems} has {len(problems)} problems, fewer than the {config.prompts_per_step} "
                             "one step needs; lower --prompts-per-step.")
        described = _describe(config) if reward_fn is None else f"the function `{getattr(reward_fn, '__name__', 'reward')}`"
        return _train(config, run, checkpoint, problems, resolve_reward(config, reward_fn), described)


def build_dataset(config: SelfCorrectTrainConfig, problems: list[dict[str, str]], tokenizer: Any) -> tuple[Any, int]:
    """TRL's data set (`prompt`, `prompt_text`, `answer` = the gold number) and its longest prompt in tokens."""
    from rlaif.rl.grpo import build_prompt_dataset  # noqa: PLC0415

    _, first = config.instructions()
    texts = [first_prompt(p["question"], first) for p in problems]
    gold: dict[str, str] = {}
    for text, problem in zip(texts, problems):
        if gold.setdefault(text, problem["gold"]) != problem["gold"]:
            raise RlaifError(f"Problem {problem['id']} repeats an earlier question with another answer; remove one.")
    dataset, longest = build_prompt_dataset(texts, tokenizer, config.prompt_format, config.max_prompt_length,
                                            config.prompts_per_step)
    return dataset.add_column("answer", [gold[t] for t in dataset["prompt_text"]]), longest


def build_trainer(config: SelfCorrectTrainConfig, model: Any, tokenizer: Any, dataset: Any, longest: int,
                  reward: RewardFn, output_dir: str | Path, callbacks: Sequence[Any] = (), **overrides: Any) -> Any:
    """The SCoReTrainer of a run: TRL's GRPOConfig from `rlaif.rl.grpo.trl_args`, the two attempt rewards.

    `overrides` go to the GRPOConfig (tests read unclipped gradients with max_grad_norm=0).
    """
    from rlaif.rl import common  # noqa: PLC0415
    from rlaif.rl.grpo import trl_args  # noqa: PLC0415
    from rlaif.selfcorrect.prompts import AttemptIds  # noqa: PLC0415
    from rlaif.selfcorrect.trainer import SCoReSettings, SCoReTrainer, attempt_rewards  # noqa: PLC0415
    from rlaif.text import resolve_prompt_format  # noqa: PLC0415

    instruction, _ = config.instructions()
    eos = [tokenizer.eos_token_id, *_generation_eos(model)]
    attempt = AttemptIds(tokenizer, resolve_prompt_format(tokenizer, config.prompt_format), instruction, eos)
    common.check_context(model, longest + config.completion_length + len(attempt.bridge_ids), config.completion_length)
    peft = common.lora_config(config.lora_r, config.lora_alpha) if config.lora_r else None
    settings = SCoReSettings(config.stage1_steps, config.alpha, config.beta1, config.beta2, attempt)
    args = trl_args(config, output_dir, **{"reward_weights": [0.0, 1.0], "use_bias_correction_kl": True, **overrides})
    return SCoReTrainer(model=model, reward_funcs=attempt_rewards(reward), args=args, train_dataset=dataset,
                        processing_class=tokenizer, peft_config=peft, callbacks=list(callbacks), score=settings)


def _train(config: SelfCorrectTrainConfig, run: Any, checkpoint: Path | None, problems: list[dict[str, str]],
           reward: RewardFn, described: str) -> dict[str, Any]:
    from transformers import set_seed  # noqa: PLC0415

    from rlaif.rl import common  # noqa: PLC0415
    from rlaif.rl.checkpoints import checkpoint_root, checkpoint_step  # noqa: PLC0415
    from rlaif.rl.step_log import StepLog  # noqa: PLC0415
    from rlaif.selfcorrect import report  # noqa: PLC0415

    out, log = Path(config.output_dir), Path(config.output_dir) / LOG_NAME
    policy = common.resolve_policy(config.policy)
    set_seed(config.seed)
    tokenizer = common.load_policy_tokenizer(policy)
    tokenizer.padding_side = "left"
    dataset, longest = build_dataset(config, problems, tokenizer)
    model = common.load_policy_model(policy)
    previous = report.log_rows(log) if checkpoint else []
    step_log = StepLog(run, report.score_row, seconds_before=(previous[-1].get("seconds") or 0.0) if previous else 0.0)
    run.start(policy, algorithm="score", rlaif_version=__version__,
              resumed_from=[*run.old_meta.get("resumed_from", []), *([checkpoint_step(checkpoint)] if checkpoint else [])])
    trainer = build_trainer(config, model, tokenizer, dataset, longest, reward, checkpoint_root(out), [step_log])
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    paths = common.save_policy(trainer.accelerator.unwrap_model(trainer.model), tokenizer, out / "policy")
    summary = {**report.log_summary(log, config.stage1_steps), "resumed_from": run.meta.get("resumed_from") or None,
               "reference": _reference_kind(trainer, config)}
    lora = {"r": config.lora_r, "alpha": config.lora_alpha} if config.lora_r else None
    report.write_card(out / "policy", config, summary, described, lora)
    plot = report.plot_rewards(log, out / CURVE_NAME, config.stage1_steps)
    result = {**paths, **summary, "log": str(log), "plot": str(plot) if plot else None}
    run.finish(result=json.loads(json.dumps(result, default=str)))
    shutil.rmtree(checkpoint_root(out), ignore_errors=True)  # the policy is saved; checkpoints are model-sized
    return result


def _reference_kind(trainer: Any, config: SelfCorrectTrainConfig) -> str:
    if config.beta == 0:
        return "none (beta1 = beta2 = 0)"
    return "the base model (adapters disabled)" if trainer.ref_model is None else "the base model (a frozen copy)"


def _generation_eos(model: Any) -> list[int]:
    """End-of-turn ids of the model's generation config (Gemma's <end_of_turn> as well as <eos>)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return [int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]) if i is not None]


def _describe(config: SelfCorrectTrainConfig) -> str:
    if config.exact_match:
        return "GSM8K exact match (1 when the answer's number equals the gold number after ####, else 0)"
    from rlaif.rl.common import describe_reward  # noqa: PLC0415

    return describe_reward(config)

