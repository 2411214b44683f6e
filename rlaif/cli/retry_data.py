"""`rlaif retry-data`: step-by-step solutions with fake mistakes taken back by [BACK] (SFT data)."""

from __future__ import annotations

from typing import Any

import click

from rlaif.cli.common import config_option, field_option_factory, one_line_errors, run_mode_check
from rlaif.selfcorrect.gsm8k import read_question_answers
from rlaif.selfcorrect.retry import FORMATS, VARIANTS, RetryConfig, write_retry_data

_option = field_option_factory(RetryConfig)


@click.command("retry-data", short_help="Retry data: fake mistakes taken back by [BACK] (SFT).")
@config_option
@click.option("--input", "input_path", required=True, type=click.Path(),
              help="Solutions: GSM8K's question/answer JSONL (one step a line), or prompt/answer.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output JSONL (prompt, completion).")
@click.option("--column-map", multiple=True, metavar="FIELD=COLUMN", help="Read question or answer from another column.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N records.")
@click.option("--resume", is_flag=True, help="Continue an existing --out file.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@_option("--p", "p", type=click.FloatRange(0, 1))
@_option("--seed", "seed", type=int)
@_option("--variant", "variant", type=click.Choice(VARIANTS))
@_option("--marker", "marker")
@_option("--format", "format", type=click.Choice(FORMATS))
@_option("--keep-calculator", "keep_calculator", is_flag=True, default=False)
@one_line_errors
def retry_data(input_path: str, out: str, column_map: tuple[str, ...], limit: int | None, resume: bool,
               overwrite: bool, **options: Any) -> None:
    """Turn step-by-step solutions into retry data (Ye et al. 2024, Physics of LMs Part 2.2).

    Before each step, with probability --p, a fake mistake is written, then --marker,
    then the correct step: --variant weak takes the mistake from a later step of the
    same solution (the paper's retry_weak), --variant miss from the problem statement.
    Seeded per record. The paper found this data helps in pretraining, while LoRA
    fine-tuning on it did not.
    """
    run_mode_check(resume, overwrite)
    config = RetryConfig(**options)
    records = read_question_answers(input_path, column_map, limit)
    mode = "overwrite" if overwrite else ("resume" if resume else "new")
    counts = write_retry_data(records, config, out, mode=mode, inputs=[input_path])
    rate = counts["mistakes_this_run"] / counts["steps_this_run"] if counts["steps_this_run"] else 0.0
    click.echo(f"Wrote {counts['written_this_run']} records to {out} ({counts['mistakes_this_run']} fake mistakes over "
               f"{counts['steps_this_run']} steps, {rate:.3f} a step; p = {config.p}, variant {config.variant}).")
