"""`rlaif revise`: SL-CAI critique -> revision chains (or checking-as-context), with SFT / pair exports."""

from __future__ import annotations

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
    skip_rows_of,
)
from rlaif.distributed import is_main_process
from rlaif.io import parse_column_map, stream_records
from rlaif.runs import meta_path, refuse_input_as_output
from rlaif.text import PROMPT_FORMATS
from rlaif.revise import EXPORTS, MODES, ReviseConfig, export_chains, export_path, revise_prompts

_HELP = {f.name: f.metadata.get("help", "") for f in fields(ReviseConfig)}


def revise_options(func: Any) -> Any:
    """The options that become a ReviseConfig."""
    options = [
        click.option("--model", default="default", help=_HELP["model"]),
        model_options(role="The policy's"),
        click.option("--constitution", default="cai-harmless", help=_HELP["constitution"]),
        click.option("--mode", type=click.Choice(MODES), default="critique-revision", help=_HELP["mode"]),
        click.option("--rounds", type=click.IntRange(min=1), default=4, help=_HELP["rounds"]),
        click.option("--few-shot", type=click.IntRange(min=0), default=0, help=_HELP["few_shot"]),
        click.option("--temperature", type=click.FloatRange(min=0), default=0.7, help=_HELP["temperature"]),
        click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=0.95, help=_HELP["top_p"]),
        click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, help=_HELP["max_new_tokens"]),
        click.option("--seed", type=int, default=0, help=_HELP["seed"]),
        click.option("--prompt-format", type=click.Choice(PROMPT_FORMATS), default="auto", help=_HELP["prompt_format"]),
        click.option("--critique-template", default="cai-critique", help=_HELP["critique_template"]),
        click.option("--revision-template", default="cai-revision", help=_HELP["revision_template"]),
        click.option("--check-template", default="check-as-context", help=_HELP["check_template"]),
        click.option("--judge", default=None, help=_HELP["judge"]),
        model_options(prefix="judge-", role="The judge's"),
        click.option("--judge-constitution", default=None, help=_HELP["judge_constitution"]),
        click.option("--judge-principles", type=click.Choice(["all", "one", "k"]), default="k",
                     help=_HELP["judge_principles"]),
        click.option("--judge-k", type=click.IntRange(min=1), default=4, help=_HELP["judge_k"]),
        click.option("--judge-template", default="cai-choice", help=_HELP["judge_template"]),
        click.option("--chunk-prompts", type=click.IntRange(min=1), default=16, help=_HELP["chunk_prompts"]),
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help=_HELP["cache_dir"]),
        click.option("--no-cache", is_flag=True, default=False, help=_HELP["no_cache"]),
        *length_options(_HELP),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.command("revise")
@config_option
@click.option("--prompts", "prompts_path", required=True, type=click.Path(),
              help="Prompts: JSONL, CSV, Parquet or a saved HF dataset with a `prompt` column (id optional).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output JSONL of chains (+ OUT.meta.json).")
@click.option("--column-map", multiple=True, metavar="FIELD=COLUMN",
              help="Read FIELD from another column, e.g. prompt=instruction.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N prompts.")
@click.option("--resume", is_flag=True, help="Continue an existing --out file (done prompts are kept, not redone).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file (cached generations are still reused).")
@click.option("--export", "exports", type=click.Choice(EXPORTS), multiple=True,
              help="Also write NAME.sft.jsonl (prompt -> final revision) and/or NAME.pairs.jsonl (final revision "
                   "chosen over the initial response; for train-rm or DPO) beside --out NAME.jsonl. With --judge, "
                   "pairs holds only the chains whose final the judge preferred (p_final_better > 0.5). Finals "
                   "that copy few-shot text are left out of both. Repeatable.")
@revise_options
@one_line_errors
def revise(prompts_path: str, out: str, column_map: tuple[str, ...], limit: int | None, resume: bool,
           overwrite: bool, exports: tuple[str, ...], **options: Any) -> None:
    """Let a model critique and revise its own responses under a constitution, round after round.

    Each prompt gives a chain: the initial response, then per round a principle
    (sampled, seeded), a critique (or a self-check with a verdict) and a revision.
    With --judge, a feedback model says per round whether the revision beat the
    text it revised.
    """
    run_mode_check(resume, overwrite)
    config = ReviseConfig(**options)
    check_options(config.model, config.backend_options)
    if config.judge:
        check_options(config.judge, config.judge_backend_options)
    prompts = stream_records(prompts_path, ["prompt"], parse_column_map(column_map), limit=limit)
    for kind in exports:  # an export is rewritten after the run: it may not be the input either
        refuse_input_as_output(export_path(out, kind), [prompts_path])
    summary = revise_prompts(prompts, config, out, overwrite=overwrite, resume=resume, inputs=[prompts_path])
    if not is_main_process():
        return  # rank 0 of a launched job reports and exports for all of them
    echo_skipped(skip_rows_of(out), "prompt", out)
    click.echo(f"{summary['prompts_this_run']} prompt(s) revised this run; {out} holds {summary['chains_in_file']} "
               f"chains, {summary['rounds']} rounds ({summary['empty_revisions']} empty revisions kept the previous "
               f"text; {summary['final_same_as_initial']} finals equal their initial response).")
    if summary.get("few_shot_copies_cut"):
        click.echo(f"{summary['few_shot_copies_cut']} round(s) copied few-shot example text; it was cut off there.")
    if "verdicts" in summary:
        empty = summary.get("empty_checks", 0)
        click.echo("Check verdicts: " + ", ".join(f"{k} {v}" for k, v in summary["verdicts"].items())
                   + f"; {empty} of {summary['rounds']} checks empty (nothing after \"Verdict:\").")
        if empty * 2 > summary["rounds"]:
            click.echo("Warning: most checks are empty: the model does not follow the check template; raise "
                       "--max-new-tokens or use a stronger --model.", err=True)
    _echo_judge(summary.get("judge_stats") or {})
    for kind, info in export_chains(out, exports).items():
        reasons = "; ".join(f"{n} {why}" for why, n in info["skipped_by_reason"].items())
        click.echo(f"Exported {info['records']} {kind} records to {info['path']} ({info['skipped']} chains skipped"
                   f"{': ' + reasons if reasons else ''}).")
    click.echo(f"Wrote {out} and {meta_path(out)}.")


def _echo_judge(stats: dict[str, Any]) -> None:
    if not stats:
        return
    click.echo("Judge: revision vs the text it revised (improved ~ Δi→c, worse ~ Δc→i, delta ~ Δ(t1,t2)):")
    rows = [(f"round {r['round']}", r) for r in stats["rounds"]] + [("final vs initial", stats["final_vs_initial"])]
    for name, r in rows:
        click.echo(f"  {name:<17} improved {r['improved']:6.1%}  worse {r['worse']:6.1%}  unchanged "
                   f"{r['unchanged']:6.1%}  delta {r['delta']:+.1%}  mean p {r['mean_p_better']:.3f}  (n={r['n']})")
