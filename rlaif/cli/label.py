"""`rlaif label`: AI feedback labels for response pairs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

import click

from rlaif.backends import check_options
from rlaif.cli.common import config_option, model_options, one_line_errors, run_mode_check
from rlaif.io import parse_column_map, read_records
from rlaif.runs import meta_path, read_meta
from rlaif.label import LabelConfig, label_pairs

_HELP = {f.name: f.metadata.get("help", "") for f in fields(LabelConfig)}


def label_model_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The labelling options shared by `label`, `align` and friends (they become a LabelConfig)."""
    options = [
        click.option("--model", default="default", help=_HELP["model"]),
        model_options(role="The feedback model's"),
        click.option("--constitution", default="cai-harmless", help=_HELP["constitution"]),
        click.option("--principles", type=click.Choice(["all", "one", "k"]), default="k", help=_HELP["principles"]),
        click.option("--k", type=click.IntRange(min=1), default=4, help=_HELP["k"]),
        click.option("--only", multiple=True, help=_HELP["only"] + " Repeat the flag for several."),
        click.option("--template", default="cai-choice", help=_HELP["template"]),
        click.option("--few-shot", type=click.IntRange(min=0), default=0, help=_HELP["few_shot"]),
        click.option("--cot/--no-cot", default=False, help=_HELP["cot"]),
        click.option("--clamp-low", type=float, default=0.4, help=_HELP["clamp_low"]),
        click.option("--clamp-high", type=float, default=0.6, help=_HELP["clamp_high"]),
        click.option("--max-rationale-tokens", type=click.IntRange(min=1), default=128, help=_HELP["max_rationale_tokens"]),
        click.option("--seed", type=int, default=0, help=_HELP["seed"]),
        click.option("--chunk-pairs", type=click.IntRange(min=1), default=16, help=_HELP["chunk_pairs"]),
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help=_HELP["cache_dir"]),
        click.option("--no-cache", is_flag=True, default=False, help=_HELP["no_cache"]),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def label_config(kwargs: dict[str, Any]) -> LabelConfig:
    """Pop the shared labelling options out of a command's kwargs into a LabelConfig."""
    return LabelConfig(**{f.name: kwargs.pop(f.name) for f in fields(LabelConfig) if f.name in kwargs})


@click.command("label")
@config_option
@click.option("--input", "input_path", required=True, type=click.Path(),
              help="Pairs: JSONL, CSV, Parquet or a saved HF dataset with prompt, response_a, response_b (id optional).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output JSONL of labels (+ OUT.meta.json).")
@click.option("--column-map", multiple=True, metavar="FIELD=COLUMN",
              help="Read FIELD from another column, e.g. response_a=chosen response_b=rejected. Repeatable.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Label only the first N pairs.")
@click.option("--resume", is_flag=True, help="Continue an existing --out file (done pairs are kept, not redone).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@label_model_options
@one_line_errors
def label(input_path: str, out: str, column_map: tuple[str, ...], limit: int | None, resume: bool,
          overwrite: bool, **options: Any) -> None:
    """Label response pairs with a feedback model under a constitution.

    Each pair is judged under the chosen principles in both orders; the
    output holds p_a (probability that response A is better) and its parts.
    """
    run_mode_check(resume, overwrite)
    config = label_config(options)
    check_options(config.model, config.backend_options)
    pairs = read_records(input_path, ["prompt", "response_a", "response_b"], parse_column_map(column_map))
    pairs = pairs[:limit] if limit else pairs
    rows = label_pairs(pairs, config, out, overwrite=overwrite, resume=resume, inputs=[input_path])
    run = read_meta(out)
    new, seconds = run.get("labelled_this_run", 0), run.get("seconds_this_run", 0.0)
    a_wins = sum(row["p_a"] > 0.5 for row in rows)
    mass = sum(row["option_mass"] for row in rows) / len(rows)
    hits = run.get("cache_hits", 0)
    if new and seconds >= 0.5:
        click.echo(f"Labelled {new} pairs in {seconds:.1f}s ({new / seconds:.2f} pairs/s; "
                   f"model ready in {run.get('model_load_seconds', 0.0):.1f}s).")
    elif new:
        source = " (raw results from the cache)" if hits else ""
        click.echo(f"Labelled {new} pairs in {seconds:.1f}s{source}.")
    else:
        click.echo(f"All {len(rows)} pairs were labelled already (nothing to do).")
    click.echo(f"{len(rows)} pairs: A preferred in {a_wins}, B in {len(rows) - a_wins}; mean option mass {mass:.3f}.")
    click.echo(f"Wrote {out} and {meta_path(out)}.")
    warn_low_mass(mass, min(row["option_mass"] for row in rows))


def warn_low_mass(mean: float, low: float, what: str = "options") -> None:
    """The template may not suit the model when its answers get little of the probability."""
    if mean < 0.5:
        click.echo(f"Warning: the {what} got only {mean:.0%} of the model's probability on average "
                   f"(lowest {low:.0%}); the template may not suit this model (see `rlaif align`).", err=True)
