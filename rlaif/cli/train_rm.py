"""`rlaif train-rm`: train a reward model on soft AI labels (or human pairs) and judge it on human labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from rlaif.cli.common import config_option, field_option_factory, one_line_errors
from rlaif.io import check_output
from rlaif.rm import TrainRMConfig

_option = field_option_factory(TrainRMConfig)
_POSITIVE = click.IntRange(min=1)


@click.command("train-rm")
@config_option
@_option("--labels", "labels", type=click.Path())
@_option("--out", "out", required=True, type=click.Path(file_okay=False))
@_option("--base-model", "base_model")
@_option("--column-map", "column_map", multiple=True, metavar="FIELD=COLUMN", default=())
@_option("--eval-human", "eval_human", multiple=True, type=click.Path(), default=())
@_option("--eval-only", "eval_only", is_flag=True, default=False)
@_option("--epochs", "epochs", type=click.FloatRange(min=0, min_open=True))
@_option("--max-steps", "max_steps", type=_POSITIVE)
@_option("--learning-rate", "learning_rate", type=click.FloatRange(min=0, min_open=True))
@_option("--batch-size", "batch_size", type=_POSITIVE)
@_option("--gradient-accumulation-steps", "gradient_accumulation_steps", type=_POSITIVE)
@_option("--max-length", "max_length", type=_POSITIVE)
@_option("--eval-split", "eval_split", type=click.FloatRange(min=0, max=1, max_open=True))
@_option("--seed", "seed", type=int)
@_option("--min-confidence", "min_confidence", type=click.FloatRange(min=0.5, max=1))
@_option("--lora-r", "lora_r", type=click.IntRange(min=0))
@_option("--lora-alpha", "lora_alpha", type=_POSITIVE)
@_option("--center-rewards-coefficient", "center_rewards_coefficient", type=click.FloatRange(min=0))
@_option("--logging-steps", "logging_steps", type=_POSITIVE)
@_option("--save-steps", "save_steps", type=click.IntRange(min=0))
@_option("--resume", "resume", is_flag=True, default=False)
@_option("--gradient-checkpointing/--no-gradient-checkpointing", "gradient_checkpointing")
@click.option("--overwrite", is_flag=True, help="Replace what an earlier run left in --out.")
@one_line_errors
def train_rm(overwrite: bool, **options: Any) -> None:
    """Train a reward model on rlaif labels with the soft-label loss (TRL RewardTrainer).

    --labels takes `rlaif label` output (soft p_a) or human pairs (prompt, chosen,
    rejected: p = 1). Writes OUT as a Hugging Face model directory with README.md
    (model card) and metrics.json: strict pairwise accuracy on --eval-human files,
    agreement with and calibration against the AI labels, reward mean/std for PPO.
    --eval-only judges an existing reward model (--base-model, default OUT) instead.
    """
    from rlaif.rm import evaluate_saved_model, train_reward_model  # noqa: PLC0415

    out = Path(options["out"])
    check_output(out, directory=True)
    if out.exists() and any(out.iterdir()) and not (overwrite or options["resume"] or options["eval_only"]):
        raise click.ClickException(f"{out} is not empty: pass --overwrite to replace it, --resume to continue "
                                   "from its last checkpoint, or choose another --out.")
    options["column_map"] = tuple(options["column_map"])
    options["eval_human"] = tuple(options["eval_human"])
    config = TrainRMConfig(**options)
    if config.eval_only:
        result = evaluate_saved_model(config)
        sections = {"labels": result["labels"]} if "labels" in result else {}
        sections.update({f"human: {name}": values for name, values in result["human"].items()})
    else:
        result = train_reward_model(config, overwrite=overwrite)
        from rlaif.rm.eval import metric_sections  # noqa: PLC0415

        sections = metric_sections(result)
        click.echo(f"Reward model saved to {config.out} (README.md, metrics.json).")
    for note in result.get("notes", []):
        click.echo(f"Note: {note}")
    for name, metrics in sections.items():
        click.echo(_summary(name, metrics))


def _summary(name: str, metrics: dict[str, Any]) -> str:
    accuracy = metrics.get("accuracy")
    shown = "-" if accuracy is None else f"{accuracy:.3f}"
    return (
        f"{name}: n={metrics['n']} accuracy={shown} loss={metrics['loss']:.4f} brier={metrics['brier']:.4f} "
        f"ece={metrics['ece']:.4f} reward mean={metrics['reward_mean']:.3f} std={metrics['reward_std']:.3f}"
    )
