"""Flags every RL command shares: the reward (one of three sources), resume/overwrite, the summary line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def reward_options(option: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--reward-model`, `--d-rlaif`, `--reward-fn` and the d-RLAIF settings, from a `field_option_factory`."""
    decorators = [
        option("--reward-model", "reward_model", type=click.Path()),
        option("--d-rlaif", "d_rlaif", is_flag=True, default=False),
        option("--reward-fn", "reward_fn", metavar="MODULE:FUNCTION"),
        option("--feedback-model", "feedback_model"),
        option("--constitution", "constitution"),
        option("--principle", "principle"),
        option("--feedback-backend-option", "feedback_backend_option", multiple=True, metavar="KEY=VALUE", default=()),
    ]

    def apply(func: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def run_mode_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--overwrite", is_flag=True, help="Delete what an earlier run left in --output-dir and start again.")(func)
    return click.option("--resume", is_flag=True,
                        help="Continue the run in --output-dir from its newest complete checkpoint (same settings).")(func)


def echo_summary(name: str, result: dict[str, Any]) -> None:
    """The run's whole-run figures and where its outputs are."""
    done = " (already complete; nothing to do)" if result.get("already_done") else ""
    resumed = f", resumed at step {', '.join(map(str, result['resumed_from']))}" if result.get("resumed_from") else ""
    if result.get("reward_first") is None:
        click.echo(f"{result.get('steps', 0)} {name} steps{done}; no step was logged.")
    else:
        seconds = f" in {result['train_seconds']:.0f} s of training" if result.get("train_seconds") is not None else ""
        click.echo(f"{result['steps']} {name} steps{seconds}{resumed}{done}; mean reward "
                   f"{result['reward_first']:.4f} -> {result['reward_last']:.4f}.")
    plot = f"  plot: {result['plot']}" if result.get("plot") else ""
    adapter = f"  adapter: {result['adapter_dir']}" if result.get("adapter_dir") else ""
    click.echo(f"Policy: {result['policy_dir']}{adapter}  log: {result['log']}{plot}")
