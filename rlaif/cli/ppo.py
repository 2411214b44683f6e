"""`rlaif ppo`: RL with TRL's PPO (the `ppo` extra), rewarded by a reward model, d-RLAIF or any reward function."""

from __future__ import annotations

from typing import Any

import click

from rlaif.cli.common import config_option, field_option_factory, one_line_errors
from rlaif.cli.rl_options import echo_summary, reward_options, run_mode_options
from rlaif.rl.ppo import PPORunConfig, check_ppo_trl, run_ppo

_option = field_option_factory(PPORunConfig)
_POSITIVE = click.IntRange(min=1)


@click.command("ppo")
@config_option
@_option("--prompts", "prompts", required=True, type=click.Path())
@_option("--policy", "policy", required=True)
@_option("--output-dir", "output_dir", required=True, type=click.Path(file_okay=False))
@reward_options(_option)
@_option("--column-map", "column_map", multiple=True, metavar="prompt=COLUMN", default=())
@_option("--steps", "steps", type=_POSITIVE)
@_option("--batch-size", "batch_size", type=_POSITIVE)
@_option("--mini-batches", "mini_batches", type=_POSITIVE)
@_option("--micro-batch-size", "micro_batch_size", type=_POSITIVE)
@_option("--ppo-epochs", "ppo_epochs", type=_POSITIVE)
@_option("--learning-rate", "learning_rate", type=click.FloatRange(min=0, min_open=True))
@_option("--kl-coef", "kl_coef", type=click.FloatRange(min=0))
@_option("--response-length", "response_length", type=_POSITIVE)
@_option("--temperature", "temperature", type=click.FloatRange(min=0, min_open=True))
@_option("--max-prompt-length", "max_prompt_length", type=_POSITIVE)
@_option("--stop-at-eos/--no-stop-at-eos", "stop_at_eos")
@_option("--missing-eos-penalty", "missing_eos_penalty", type=click.FloatRange(min=0))
@_option("--plain-prompts", "plain_prompts", is_flag=True, default=False)
@_option("--lora-r", "lora_r", type=click.IntRange(min=0))
@_option("--lora-alpha", "lora_alpha", type=click.FloatRange(min=0, min_open=True))
@_option("--save-steps", "save_steps", type=_POSITIVE)
@_option("--seed", "seed", type=int)
@run_mode_options
@one_line_errors
def ppo(resume: bool, overwrite: bool, **options: Any) -> None:
    """Train a policy with PPO (TRL) on AI feedback.

    Needs the ppo extra (TRL 1.12: TRL removed PPOTrainer in 1.13): pip install
    'rlaif[ppo]'. The reward is a reward model with any tokenizer (--reward-model DIR),
    the feedback LLM's 1-10 score mapped to [-1, 1] (--d-rlaif), or a function
    MODULE:FUNCTION with TRL's reward signature (--reward-fn). Writes OUTPUT_DIR/policy
    (with a model card), ppo_log.jsonl (reward, KL, response length per step) and
    ppo_curve.png; --resume continues a killed run from its last checkpoint.
    """
    check_ppo_trl()  # before anything heavy is imported
    for name in ("column_map", "feedback_backend_option"):
        options[name] = tuple(options[name])
    echo_summary("PPO", run_ppo(PPORunConfig(**options), resume=resume, overwrite=overwrite))
