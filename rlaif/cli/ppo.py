"""`rlaif ppo`: RL with TRL's PPO, rewarded by a reward model or by the feedback LLM (d-RLAIF)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from rlaif.cli.common import config_option, field_option_factory, one_line_errors
from rlaif.io import check_output
from rlaif.ppo import PPORunConfig, run_ppo

_option = field_option_factory(PPORunConfig)
_POSITIVE = click.IntRange(min=1)


@click.command("ppo")
@config_option
@_option("--prompts", "prompts", required=True, type=click.Path())
@_option("--policy", "policy", required=True)
@_option("--output-dir", "output_dir", required=True, type=click.Path(file_okay=False))
@_option("--reward-model", "reward_model", type=click.Path())
@_option("--d-rlaif", "d_rlaif", is_flag=True, default=False)
@_option("--feedback-model", "feedback_model")
@_option("--constitution", "constitution")
@_option("--principle", "principle")
@_option("--column-map", "column_map", multiple=True, metavar="prompt=COLUMN", default=())
@_option("--steps", "steps", type=_POSITIVE)
@_option("--batch-size", "batch_size", type=_POSITIVE)
@_option("--mini-batches", "mini_batches", type=_POSITIVE)
@_option("--ppo-epochs", "ppo_epochs", type=_POSITIVE)
@_option("--learning-rate", "learning_rate", type=click.FloatRange(min=0, min_open=True))
@_option("--kl-coef", "kl_coef", type=click.FloatRange(min=0))
@_option("--response-length", "response_length", type=_POSITIVE)
@_option("--temperature", "temperature", type=click.FloatRange(min=0, min_open=True))
@_option("--max-prompt-length", "max_prompt_length", type=_POSITIVE)
@_option("--stop-at-eos/--no-stop-at-eos", "stop_at_eos")
@_option("--missing-eos-penalty", "missing_eos_penalty", type=click.FloatRange(min=0))
@_option("--plain-prompts", "plain_prompts", is_flag=True, default=False)
@_option("--seed", "seed", type=int)
@click.option("--overwrite", is_flag=True, help="Replace what an earlier run left in --output-dir.")
@one_line_errors
def ppo(overwrite: bool, **options: Any) -> None:
    """Train a policy with PPO (TRL) on AI feedback.

    The reward is a reward model with any tokenizer (--reward-model DIR) or the
    feedback LLM's 1-10 score mapped to [-1, 1] (--d-rlaif). Writes OUTPUT_DIR/policy,
    ppo_log.jsonl (reward, KL, response length per step) and ppo_curve.png.
    """
    out = Path(options["output_dir"])
    check_output(out, directory=True)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise click.ClickException(f"{out} is not empty: pass --overwrite to replace that run or choose another --output-dir.")
    options["column_map"] = tuple(options["column_map"])
    result = run_ppo(PPORunConfig(**options))
    if result["reward_first"] is None:
        click.echo(f"{result['steps']} PPO steps; no step was logged (too few prompts for one batch?).")
    else:
        click.echo(f"{result['steps']} PPO steps; mean reward {result['reward_first']:.4f} -> {result['reward_last']:.4f}.")
    plot = f"  plot: {result['plot']}" if result["plot"] else ""
    click.echo(f"Policy: {result['policy_dir']}  log: {result['log']}{plot}")
