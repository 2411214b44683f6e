"""`rlaif label`: AI feedback labels for response pairs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any

import click

from rlaif.backends import check_options
from rlaif.cli.common import (
    config_option,
    echo_skipped,
    length_options,
    model_options,
    one_line_errors,
    run_mode_check,
)
from rlaif.distributed import is_main_process
from rlaif.io import is_skip_row, iter_rows, parse_column_map, read_records, stream_records
from rlaif.runs import meta_path
from rlaif.label import PAIR_FIELDS, LabelConfig, label_pairs
from rlaif.shards import output_rows

PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")

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
        *length_options(_HELP),
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
              help="Pairs: JSONL, CSV, Parquet or a saved HF dataset with prompt, response_a, response_b (id optional), "
                   "or human preferences with prompt, chosen, rejected (TRL's format; labelled as pairs that "
                   "record which slot the human chose).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output JSONL of labels (+ OUT.meta.json).")
@click.option("--column-map", multiple=True, metavar="FIELD=COLUMN",
              help="Read FIELD from another column, e.g. prompt=question or chosen=preferred. Repeatable.")
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
    pairs = read_label_input(input_path, parse_column_map(column_map), config.seed, limit)
    run = label_pairs(pairs, config, out, overwrite=overwrite, resume=resume, inputs=[input_path], return_rows=False)
    if not is_main_process():
        return  # rank 0 of a launched job reports for all of them
    tally = LabelTally.of(output_rows(out, pairs, run))
    rows, skipped = tally.rows, tally.skipped
    new, seconds = run.get("labelled_this_run", 0), run.get("seconds_this_run", 0.0)
    a_wins = tally.a_wins
    mass = tally.mass / max(rows, 1)
    hits = 0 if config.no_cache else run.get("cache_hits", 0)
    if new and seconds >= 0.5:
        click.echo(f"Labelled {new} pairs in {seconds:.1f}s ({new / seconds:.2f} pairs/s; "
                   f"model ready in {run.get('model_load_seconds', 0.0):.1f}s).")
    elif new:
        source = " (raw results from the cache)" if hits else ""
        click.echo(f"Labelled {new} pairs in {seconds:.1f}s{source}.")
    elif rows:
        click.echo(f"All {rows} pairs were labelled already (nothing to do).")
    echo_skipped(skipped, "pair", out)
    if not rows:
        return
    click.echo(f"{rows} pairs: A preferred in {a_wins}, B in {rows - a_wins}; mean option mass {mass:.3f}.")
    echo_human_agreement(tally, input_path, out)
    click.echo(f"Wrote {out} and {meta_path(out)}.")
    warn_low_mass(mass, tally.low_mass)


class LabelTally:
    """What `rlaif label` reports, read from OUT in one pass: counts and the skip rows, not the labels."""

    def __init__(self) -> None:
        self.rows = self.a_wins = self.judged = 0
        self.mass, self.low_mass, self.agree = 0.0, 1.0, 0.0
        self.skipped: list[dict[str, Any]] = []

    @classmethod
    def of(cls, rows: Iterable[dict[str, Any]]) -> LabelTally:
        tally = cls()
        for row in rows:
            tally.add(row)
        return tally

    def add(self, row: dict[str, Any]) -> None:
        if is_skip_row(row):
            self.skipped.append(row)
            return
        self.rows += 1
        self.a_wins += row["p_a"] > 0.5
        self.mass += row["option_mass"]
        self.low_mass = min(self.low_mass, row["option_mass"])
        if row.get("human") in ("a", "b"):  # ties count half
            self.judged += 1
            self.agree += 0.5 if row["p_a"] == 0.5 else float((row["p_a"] > 0.5) == (row["human"] == "a"))


def is_preference_file(path: str, column_map: dict[str, str]) -> bool:
    """Whether `path` holds TRL preference rows (prompt, chosen, rejected) rather than response_a/response_b pairs.

    Mapping chosen/rejected decides for it, mapping response_a/response_b against it; otherwise the columns do.
    """
    if {"chosen", "rejected"} & set(column_map):
        return True
    if {"response_a", "response_b"} & set(column_map):
        return False
    columns = set(next(iter_rows(path), {}))
    return not {"response_a", "response_b"} <= columns and {"chosen", "rejected"} <= columns


def read_label_input(path: str, column_map: dict[str, str], seed: int, limit: int | None = None) -> list[dict[str, str]]:
    """The pairs to label: response_a/response_b pairs as they are, or human preference rows turned into pairs.

    A preference row becomes a pair with the human's choice as response A in exactly half of the pairs (a seeded
    hash of the id decides, as `rlaif align` does) and `human` ("a" or "b") naming the slot the human chose.
    """
    if not is_preference_file(path, column_map):
        return stream_records(path, list(PAIR_FIELDS), column_map, limit=limit)  # read in batches, any size
    from rlaif.align import build_pairs  # noqa: PLC0415 (numpy; only for human files)

    pairs = build_pairs(read_records(path, list(PREFERENCE_FIELDS), column_map)[:limit], seed)
    first = sum(p["human"] == "a" for p in pairs)
    click.echo(f"{path} holds human preferences (prompt/chosen/rejected): the human's choice is response A in "
               f"{first} pairs and B in {len(pairs) - first} (by a seeded hash of the id); each label records it "
               "as `human`.")
    return pairs


def echo_human_agreement(tally: LabelTally, input_path: str, out: str) -> None:
    """For human preference input: how often the labeller agrees with the human (ties count half)."""
    if not tally.judged:
        return
    click.echo(f"The labeller agrees with the human on {tally.agree / tally.judged:.1%} of {tally.judged} pairs; "
               f"for intervals, position and length bias: rlaif align --human {input_path} --labels {out}")


def warn_low_mass(mean: float, low: float, what: str = "options") -> None:
    """The template may not suit the model when its answers get little of the probability."""
    if mean < 0.5:
        click.echo(f"Warning: the {what} got only {mean:.0%} of the model's probability on average "
                   f"(lowest {low:.0%}); the template may not suit this model (see `rlaif align`).", err=True)
