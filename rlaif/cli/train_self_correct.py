"""`rlaif train-self-correct`: SCoRe (stage I, then stage II) on TRL's GRPOTrainer."""

from __future__ import annotations

from typing import Any

import click

from rlaif.cli.common import config_option, field_option_factory, one_line_errors
from rlaif.cli.rl_options import reward_options, run_mode_options
from rlaif.selfcorrect.train import SelfCorrectTrainConfig, train_self_correct as run_training
from rlaif.text import PROMPT_FORMATS

_option = field_option_factory(SelfCorrectTrainConfig)
_POSITIVE = click.IntRange(min=1)
_NON_NEGATIVE = click.FloatRange(min=0)


@click.command("train-self-correct", short_help="Train self-correction with SCoRe (stage I, then II).")
@config_option
@_option("--problems", "problems", required=True, type=click.Path())
@_option("--policy", "policy", required=True)
@_option("--output-dir", "output_dir", required=True, type=click.Path(file_okay=False))
@reward_options(_option)
@_option("--column-map", "column_map", multiple=True, metavar="FIELD=COLUMN", default=())
@_option("--limit", "limit", type=_POSITIVE)
@_option("--stage1-steps", "stage1_steps", type=click.IntRange(min=0))
@_option("--stage2-steps", "stage2_steps", type=click.IntRange(min=0))
@_option("--prompts-per-step", "prompts_per_step", type=_POSITIVE)
@_option("--num-generations", "num_generations", type=click.IntRange(min=2))
@_option("--learning-rate", "learning_rate", type=click.FloatRange(min=0, min_open=True))
@_option("--alpha", "alpha", type=_NON_NEGATIVE)
@_option("--beta1", "beta1", type=_NON_NEGATIVE)
@_option("--beta2", "beta2", type=_NON_NEGATIVE)
@_option("--completion-length", "completion_length", type=_POSITIVE)
@_option("--temperature", "temperature", type=click.FloatRange(min=0, min_open=True))
@_option("--max-prompt-length", "max_prompt_length", type=_POSITIVE)
@_option("--prompt-format", "prompt_format", type=click.Choice(PROMPT_FORMATS))
@_option("--instruction", "instruction")
@_option("--first-instruction", "first_instruction")
@_option("--lora-r", "lora_r", type=click.IntRange(min=0))
@_option("--lora-alpha", "lora_alpha", type=click.FloatRange(min=0, min_open=True))
@_option("--gradient-checkpointing/--no-gradient-checkpointing", "gradient_checkpointing")
@_option("--save-steps", "save_steps", type=_POSITIVE)
@_option("--seed", "seed", type=int)
@run_mode_options
@one_line_errors
def train_self_correct(resume: bool, overwrite: bool, **options: Any) -> None:
    """Train a policy to correct itself with SCoRe (Kumar et al. 2024): stage I, then stage II.

    Each rollout is two attempts: y1 from the problem, y2 from the problem, y1 and the
    self-correction instruction. Stage I rewards y2 and holds y1 near the base model
    (KL weight --beta2); stage II rewards both, with a bonus --alpha·(r(y2) − r(y1)) on
    y2. The reward is GSM8K exact match unless --reward-model, --d-rlaif or --reward-fn
    names another. Writes OUTPUT_DIR/policy (with a model card), score_log.jsonl and
    score_curve.png (both attempts' reward per step); --resume continues a killed run.
    """
    for name in ("column_map", "feedback_backend_option"):
        options[name] = tuple(options[name])
    result = run_training(SelfCorrectTrainConfig(**options), resume=resume, overwrite=overwrite)
    done = " (already complete; nothing to do)" if result.get("already_done") else ""
    click.echo(f"{result.get('steps', 0)} SCoRe steps{done}.")
    for stage in (1, 2):
        first = [result.get(f"stage{stage}_reward_attempt{a}_first") for a in (1, 2)]
        last = [result.get(f"stage{stage}_reward_attempt{a}_last") for a in (1, 2)]
        if None not in first and None not in last:
            click.echo(f"Stage {'I' * stage}: reward attempt 1 {first[0]:.3f} -> {last[0]:.3f}, "
                       f"attempt 2 {first[1]:.3f} -> {last[1]:.3f} (first -> last step).")
    adapter = f"  adapter: {result['adapter_dir']}" if result.get("adapter_dir") else ""
    plot = f"  plot: {result['plot']}" if result.get("plot") else ""
    click.echo(f"Policy: {result['policy_dir']}{adapter}  log: {result['log']}{plot}")
