"""`rlaif score`: d-RLAIF ratings (1-10 -> [-1, 1]) of single responses."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import click

from rlaif.backends import check_options
from rlaif.cli.common import (
    config_option,
    echo_skipped,
    model_options,
    one_line_errors,
    run_mode_check,
    with_length_options,
)
from rlaif.cli.label import warn_low_mass
from rlaif.drlaif import ScoreConfig, score_records
from rlaif.distributed import is_main_process
from rlaif.io import is_skip_row, parse_column_map, stream_records
from rlaif.runs import meta_path
from rlaif.shards import output_rows

_HELP = {f.name: f.metadata.get("help", "") for f in fields(ScoreConfig)}


@click.command("score")
@config_option
@click.option("--input", "input_path", required=True, type=click.Path(),
              help="Records with prompt and response (JSONL, CSV, Parquet or a saved HF dataset).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output JSONL of scores (+ OUT.meta.json).")
@click.option("--column-map", multiple=True, metavar="FIELD=COLUMN", help="Read FIELD from another column, e.g. response=chosen.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Score only the first N records.")
@click.option("--resume", is_flag=True, help="Continue an existing --out file.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("--model", default="default", help="Feedback model: `default`, a Hugging Face id or directory, or a server URL http://HOST:PORT/v1.")
@model_options(role="The feedback model's")
@click.option("--constitution", default="cai-harmless", help="Built-in constitution name or YAML path.")
@click.option("--principle", multiple=True, help="Principle id to rate by (repeat to average several). Default: the first.")
@click.option("--template", default="drlaif-score", help="Rating template: built-in name or .j2 path.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Raw-result cache directory.")
@click.option("--no-cache", is_flag=True, help="Do not read or write the raw-result cache.")
@with_length_options(_HELP)
@one_line_errors
def score(input_path: str, out: str, column_map: tuple[str, ...], limit: int | None, resume: bool, overwrite: bool,
          **options: Any) -> None:
    """Rate single responses 1-10 with the feedback model (d-RLAIF); score = (E[rating] - 5.5) / 4.5."""
    run_mode_check(resume, overwrite)
    config = ScoreConfig(**options)
    check_options(config.model, config.backend_options)
    records = stream_records(input_path, ["prompt", "response"], parse_column_map(column_map), limit=limit)
    run = score_records(records, config, out, overwrite=overwrite, resume=resume, inputs=[input_path],
                        return_rows=False)
    if not is_main_process():
        return  # rank 0 of a launched job reports for all of them
    rows, total, mass, low, skipped = 0, 0.0, 0.0, 1.0, []
    for row in output_rows(out, records, run):  # one pass over OUT: counts, not the rows
        if is_skip_row(row):
            skipped.append(row)
            continue
        rows, total, mass, low = rows + 1, total + row["score"], mass + row["option_mass"], min(low, row["option_mass"])
    echo_skipped(skipped, "response", out)
    if not rows:
        click.echo(f"Wrote {out} and {meta_path(out)}.")
        return
    mean = total / rows
    click.echo(f"Scored {rows} responses: mean score {mean:+.3f} (mean rating {5.5 + 4.5 * mean:.2f}/10).")
    click.echo(f"Wrote {out} and {meta_path(out)}.")
    warn_low_mass(mass / rows, low, "ratings")
