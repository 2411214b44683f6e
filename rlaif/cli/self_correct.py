"""`rlaif self-correct`: two greedy attempts per problem; Accuracy@t1, Accuracy@t2 and the Δs of SCoRe."""

from __future__ import annotations

from typing import Any

import click

from rlaif.backends import check_options
from rlaif.cli.common import config_option, field_option_factory, model_options, one_line_errors, run_mode_check
from rlaif.selfcorrect.evaluate import SelfCorrectConfig, evaluate_self_correction
from rlaif.selfcorrect.gsm8k import read_problems
from rlaif.selfcorrect.metrics import format_table
from rlaif.text import PROMPT_FORMATS

_option = field_option_factory(SelfCorrectConfig)
_POSITIVE = click.IntRange(min=1)


@click.command("self-correct", short_help="Two attempts per problem: Acc@t1, Acc@t2 and Δ (SCoRe's metrics).")
@config_option
@click.option("--problems", "problems_path", required=True, type=click.Path(),
              help="Problems: GSM8K's question/answer JSONL (answer ends in '#### N'), or prompt/answer.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: attempts.jsonl (+ meta), report.json, report.md.")
@click.option("--column-map", multiple=True, metavar="FIELD=COLUMN", help="Read question or answer from another column.")
@click.option("--limit", type=_POSITIVE, default=None, help="Use only the first N problems.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out (done problems are kept).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier run in --out.")
@_option("--model", "model")
@model_options(role="The model's")
@_option("--instruction", "instruction")
@_option("--first-instruction", "first_instruction")
@_option("--prompt-format", "prompt_format", type=click.Choice(PROMPT_FORMATS))
@_option("--max-new-tokens", "max_new_tokens", type=_POSITIVE)
@_option("--n-boot", "n_boot", type=_POSITIVE)
@_option("--seed", "seed", type=int)
@_option("--cache-dir", "cache_dir", type=click.Path(file_okay=False))
@click.option("--no-cache", is_flag=True, default=False, help="Do not read or write the raw-result cache.")
@one_line_errors
def self_correct(problems_path: str, out: str, column_map: tuple[str, ...], limit: int | None, resume: bool,
                 overwrite: bool, **options: Any) -> None:
    """Measure intrinsic self-correction: each problem is answered greedily, then answered again after
    the self-correction instruction with the first answer in context (SCoRe's two-attempt protocol).

    Reports Accuracy@t1, Accuracy@t2, Δ = t2 − t1, Δ^{i→c} (wrong, then right) and
    Δ^{c→i} (right, then wrong) with bootstrap 95% intervals, scored by GSM8K exact
    match (the number after "The final answer is", else the last number).
    """
    run_mode_check(resume, overwrite)
    config = SelfCorrectConfig(**options)
    check_options(config.model, config.backend_options)
    problems = read_problems(problems_path, column_map, limit)
    mode = "overwrite" if overwrite else ("resume" if resume else "new")
    report = evaluate_self_correction(problems, config, out, mode=mode, inputs=[problems_path])
    click.echo(format_table(report))
    click.echo(f"Wrote {out}/report.json, {out}/report.md and {out}/attempts.jsonl.")
