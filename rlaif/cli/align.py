"""`rlaif align`: measure the AI labeller against human preference labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

import rlaif.label as labelling
from rlaif.align import (
    AlignConfig,
    build_pairs,
    build_report,
    match_labels,
    read_human_pairs,
)
from rlaif.align.report import (
    PLOT_HINT,
    compare_reports,
    format_table,
    has_matplotlib,
    matplotlib_figure,
    write_report,
)
from rlaif.cli.common import config_option, one_line_errors, run_mode_check
from rlaif.cli.label import label_config, label_model_options
from rlaif.errors import RlaifError
from rlaif.distributed import is_main_process
from rlaif.io import RecordWriter, check_output, parse_column_map, read_rows
from rlaif.runs import refuse_input_as_output, usable_rows

DEFAULT_OUT = "align-report"
META_KEYS = ("model", "template", "constitution", "principles", "cot")
WRITTEN = ("pairs.jsonl", "labels.jsonl", "report.json", "report.md")  # what align writes into OUT


@click.command("align")
@config_option
@click.option("--human", type=click.Path(), default=None,
              help="Human preferences in TRL's prompt/chosen/rejected format: JSONL, CSV, Parquet or a saved HF dataset.")
@click.option("--column-map", multiple=True, metavar="FIELD=COLUMN",
              help="Read prompt/chosen/rejected/id from another column, e.g. chosen=response_good. Repeatable.")
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="Score an existing labels file (from `rlaif label`) instead of labelling the pairs.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help=f"Report directory (default {DEFAULT_OUT}); with --compare, where compare.md is written.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N usable human pairs.")
@click.option("--n-boot", type=click.IntRange(min=1), default=1000, help="Bootstrap resamples for the 95% intervals.")
@click.option("--n-bins", type=click.IntRange(min=1), default=10, help="Bins of p_a in the calibration (ECE) table.")
@click.option("--plots/--no-plots", default=None,
              help=f"Draw PNG plots (needs matplotlib: {PLOT_HINT}). Default: draw them when matplotlib is installed.")
@click.option("--resume", is_flag=True, help="Continue OUT/labels.jsonl (done pairs are kept, not redone); the report is redrawn.")
@click.option("--overwrite", is_flag=True, help="Replace OUT/labels.jsonl and the report: relabel from scratch.")
@click.option("--compare", is_flag=True, help="Put the reports in the directories given as arguments side by side.")
@click.argument("report_dirs", nargs=-1, type=click.Path(file_okay=False))
@label_model_options
@one_line_errors
def align(human: str | None, column_map: tuple[str, ...], labels: str | None, out: str | None,
          limit: int | None, n_boot: int, n_bins: int, plots: bool | None, resume: bool, overwrite: bool, compare: bool,
          report_dirs: tuple[str, ...], **options: Any) -> None:
    """How often does the AI labeller agree with humans, and where does it go wrong?

    Labels the human pairs (chosen shown first in half of them, by a seeded
    hash of the id) with the same options as `rlaif label`, or reads --labels,
    then reports alignment, position and length bias, calibration and
    baselines: a terminal table, OUT/report.json, OUT/report.md and plots.
    `rlaif align --compare DIR1 DIR2 ...` puts saved reports side by side.
    """
    if compare:
        _compare(list(report_dirs), out)
        return
    if report_dirs:
        raise RlaifError(f"Unexpected argument(s) {' '.join(report_dirs)}: directories are for --compare DIR1 DIR2 ...")
    if not human:
        raise RlaifError("Give the human preferences: rlaif align --human FILE (rows of prompt, chosen, rejected).")
    run_mode_check(resume, overwrite)
    settings = AlignConfig(n_boot=n_boot, n_bins=n_bins, seed=options["seed"])
    config = label_config(options)
    if plots:
        matplotlib_figure()  # fail before labelling when plots were asked for and cannot be drawn
    humans, skipped = read_human_pairs(human, parse_column_map(column_map))
    n_input = len(humans) + sum(skipped.values())
    humans = humans[:limit] if limit else humans
    out_dir = Path(out or DEFAULT_OUT)
    _check_out_dir(out_dir, human, overwrite, (labels,) if labels else ())
    rows = read_rows(labels) if labels else _label(humans, config, out_dir, overwrite, resume, settings.seed)
    if not is_main_process():
        return  # under a launcher every rank labels its share; rank 0 writes the report
    rows, left_out = usable_rows(rows, labels or out_dir / "labels.jsonl")
    skipped.update({"prompt too long for the labeller": left_out["skipped"],
                    "label id repeated (the first kept)": left_out["duplicates"]})
    skipped = +skipped  # drop the zero counts
    scored, unmatched = match_labels(humans, rows)
    skipped.update(unmatched)
    source = {"human": str(human), "labels": str(labels or out_dir / "labels.jsonl"), **_labeller_meta(rows)}
    report = build_report(scored, skipped, n_input, settings, source)
    written = write_report(report, out_dir, plots)
    click.echo(format_table(report))
    click.echo(f"Wrote {', '.join(str(p) for p in written)}.")
    if plots is None and not has_matplotlib():
        click.echo(f"No plots: matplotlib is not installed ({PLOT_HINT}).", err=True)


def _check_out_dir(out_dir: Path, human: str, overwrite: bool, extra_inputs: tuple[str, ...] = ()) -> None:
    """Refuse to mix a report for another human file into OUT, or to write over an input; --overwrite clears
    the old report and plots."""
    check_output(out_dir, directory=True)
    for written in WRITTEN:  # with --labels, only the report is written
        refuse_input_as_output(out_dir / written, [human, *(extra_inputs if written.startswith("report") else ())])
    old = out_dir / "report.json"
    if not old.exists():
        return
    if overwrite:
        for stale in [old, out_dir / "report.md", *out_dir.glob("*.png")]:
            stale.unlink(missing_ok=True)
        return
    try:
        previous = json.loads(old.read_text(encoding="utf-8")).get("source", {}).get("human")
    except (OSError, ValueError):
        previous = None
    if previous and Path(previous).resolve() != Path(human).resolve():
        raise RlaifError(f"{out_dir} holds the report for {previous}: pass --overwrite to replace it "
                         "or choose another --out.")


def _label(humans: list[dict], config: labelling.LabelConfig, out_dir: Path, overwrite: bool, resume: bool,
           seed: int) -> list[dict]:
    """Build the pairs (OUT/pairs.jsonl records which slot the human chose) and label them into OUT/labels.jsonl."""
    pairs = build_pairs(humans, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_main_process():  # under a launcher the other ranks build the same pairs and wait for rank 0
        with RecordWriter(out_dir / "pairs.jsonl", overwrite=True) as writer:
            writer.write_all(pairs)
    to_label = [{k: p[k] for k in ("id", "prompt", "response_a", "response_b")} for p in pairs]
    return labelling.label_pairs(to_label, config, out_dir / "labels.jsonl", overwrite=overwrite, resume=resume,
                                 inputs=[out_dir / "pairs.jsonl"])


def _labeller_meta(labels: list[dict]) -> dict[str, Any]:
    """Who labelled: model, template, constitution... from the first label's meta."""
    meta = next((row.get("meta") for row in labels if isinstance(row.get("meta"), dict)), None) or {}
    return {key: meta[key] for key in META_KEYS if key in meta}


def _compare(directories: list[str], out: str | None) -> None:
    if not directories:
        raise RlaifError("--compare needs report directories: rlaif align --compare DIR1 DIR2 ...")
    text, markdown = compare_reports(directories)
    click.echo(text)
    if out:
        path = Path(out) / "compare.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown, encoding="utf-8")
        click.echo(f"Wrote {path}.")
