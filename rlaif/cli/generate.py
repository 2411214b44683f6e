"""`rlaif generate`: response pairs sampled from a policy model, ready for `rlaif label`."""

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
    skip_rows_of,
    with_length_options,
)
from rlaif.generate import GenerateConfig, generate_pairs
from rlaif.distributed import is_main_process
from rlaif.io import parse_column_map, stream_records
from rlaif.runs import meta_path
from rlaif.text import PROMPT_FORMATS

_HELP = {f.name: f.metadata.get("help", "") for f in fields(GenerateConfig)}


@click.command("generate")
@config_option
@click.option("--prompts", "prompts_path", required=True, type=click.Path(),
              help="Prompts: JSONL, CSV, Parquet or a saved HF dataset with a `prompt` column (id optional).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output JSONL of pairs (+ OUT.meta.json).")
@click.option("--column-map", multiple=True, metavar="FIELD=COLUMN",
              help="Read FIELD from another column, e.g. prompt=instruction.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N prompts.")
@click.option("--resume", is_flag=True, help="Continue an existing --out file (done prompts are kept, not redone).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file (cached samples are still reused).")
@click.option("--model", default="default", help=_HELP["model"])
@model_options(role="The policy's")
@click.option("--n", type=click.IntRange(min=2), default=2, help=_HELP["n"])
@click.option("--pairs", type=click.Choice(["adjacent", "all"]), default="adjacent", help=_HELP["pairs"])
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=1.0, help=_HELP["temperature"])
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, help=_HELP["top_p"])
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, help=_HELP["max_new_tokens"])
@click.option("--seed", type=int, default=0, help=_HELP["seed"])
@click.option("--prompt-format", type=click.Choice(PROMPT_FORMATS), default="auto", help=_HELP["prompt_format"])
@click.option("--chunk-prompts", type=click.IntRange(min=1), default=16, help=_HELP["chunk_prompts"])
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help=_HELP["cache_dir"])
@click.option("--no-cache", is_flag=True, default=False, help=_HELP["no_cache"])
@with_length_options(_HELP)
@one_line_errors
def generate(prompts_path: str, out: str, column_map: tuple[str, ...], limit: int | None, resume: bool,
             overwrite: bool, **options: Any) -> None:
    """Sample --n responses per prompt from a policy model and write response pairs.

    Identical or empty responses are dropped (and counted). The output is the
    pair format `rlaif label --input` reads.
    """
    run_mode_check(resume, overwrite)
    config = GenerateConfig(**options)
    check_options(config.model, config.backend_options)
    prompts = stream_records(prompts_path, ["prompt"], parse_column_map(column_map), limit=limit)
    summary = generate_pairs(prompts, config, out, overwrite=overwrite, resume=resume, inputs=[prompts_path])
    if not is_main_process():
        return  # rank 0 of a launched job reports for all of them
    dropped = summary["dropped_identical"] + summary["dropped_duplicate"] + summary["dropped_empty"]
    click.echo(f"{summary['prompts_this_run']} prompt(s) this run: wrote {summary['pairs_this_run']} pairs, dropped "
               f"{dropped} ({summary['dropped_identical']} identical, {summary['dropped_duplicate']} duplicate, "
               f"{summary['dropped_empty']} empty); {summary['samples_generated']} samples generated, "
               f"{summary['samples_from_cache']} from the cache.")
    echo_skipped(skip_rows_of(out), "prompt", out)
    click.echo(f"{out} holds {summary['pairs_in_file']} pairs; wrote {meta_path(out)}.")
    if summary["pairs_in_file"] == 0:
        click.echo("Warning: no pairs: every response pair was identical or empty; raise --temperature or "
                   "--max-new-tokens.", err=True)
