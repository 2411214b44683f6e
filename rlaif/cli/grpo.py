"""`rlaif grpo`: RL with TRL's GRPO or RLOO, rewarded by a reward model, d-RLAIF or any reward function."""

from __future__ import annotations

from typing import Any

import click

from rlaif.cli.common import config_option, field_option_factory, one_line_errors
from rlaif.cli.rl_options import echo_summary, reward_options, run_mode_options
from rlaif.rl.grpo import ALGORITHMS, LOSSES, SCALE_REWARDS, GRPORunConfig, run_grpo
from rlaif.text import PROMPT_FORMATS

_option = field_option_factory(GRPORunConfig)
_POSITIVE = click.IntRange(min=1)


@click.command("grpo")
@config_option
@_option("--prompts", "prompts", required=True, type=click.Path())
@_option("--policy", "policy", required=True)
@_option("--output-dir", "output_dir", required=True, type=click.Path(file_okay=False))
@reward_options(_option)
@_option("--algorithm", "algorithm", type=click.Choice(ALGORITHMS))
@_option("--loss", "loss", type=click.Choice(LOSSES))
@_option("--scale-rewards", "scale_rewards", type=click.Choice(SCALE_REWARDS))
@_option("--column-map", "column_map", multiple=True, metavar="prompt=COLUMN", default=())
@_option("--steps", "steps", type=_POSITIVE)
@_option("--prompts-per-step", "prompts_per_step", type=_POSITIVE)
@_option("--num-generations", "num_generations", type=click.IntRange(min=2))
@_option("--learning-rate", "learning_rate", type=click.FloatRange(min=0, min_open=True))
@_option("--beta", "beta", type=click.FloatRange(min=0))
@_option("--completion-length", "completion_length", type=_POSITIVE)
@_option("--temperature", "temperature", type=click.FloatRange(min=0, min_open=True))
@_option("--max-prompt-length", "max_prompt_length", type=_POSITIVE)
@_option("--prompt-format", "prompt_format", type=click.Choice(PROMPT_FORMATS))
@_option("--lora-r", "lora_r", type=click.IntRange(min=0))
@_option("--lora-alpha", "lora_alpha", type=click.FloatRange(min=0, min_open=True))
@_option("--gradient-checkpointing/--no-gradient-checkpointing", "gradient_checkpointing")
@_option("--save-steps", "save_steps", type=_POSITIVE)
@_option("--seed", "seed", type=int)
@run_mode_options
@one_line_errors
def grpo(resume: bool, overwrite: bool, **options: Any) -> None:
    """Train a policy with GRPO or RLOO (TRL) on AI feedback.

    The reward is a reward model with any tokenizer (--reward-model DIR), the feedback
    LLM's 1-10 score mapped to [-1, 1] (--d-rlaif), or a function MODULE:FUNCTION with
    TRL's reward signature (--reward-fn). Writes OUTPUT_DIR/policy (with a model card;
    with --lora-r the adapter too), grpo_log.jsonl (reward, KL, length per step) and
    grpo_curve.png; --resume continues a killed run from its last checkpoint.
    """
    for name in ("column_map", "feedback_backend_option"):
        options[name] = tuple(options[name])
    result = run_grpo(GRPORunConfig(**options), resume=resume, overwrite=overwrite)
    echo_summary(options["algorithm"].upper(), result)
