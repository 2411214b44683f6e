"""Shared CLI plumbing: `--config` YAML defaults and one-line errors."""

from __future__ import annotations

import errno
import functools
import shlex
import sys
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import click

from rlaif.config import load_yaml_config
from rlaif.errors import RlaifError

DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO)


def _apply_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if not value:
        return
    # YAML keys are the flags without `--` (dashes or underscores); the parameter may be named otherwise.
    names: dict[str, str] = {}
    for param in ctx.command.params:
        if not param.name or param.name == "config":
            continue
        flags = [o for o in param.opts if o.startswith("--")] or [param.name]
        for flag in flags:
            names[flag.lstrip("-").split("/")[0].replace("-", "_")] = param.name
        names.setdefault(param.name, param.name)  # `backend_options:` as well as `backend_option:`
    try:
        values = load_yaml_config(value, set(names))
    except RlaifError as err:
        raise click.BadParameter(str(err)) from err
    repeatable = {p.name for p in ctx.command.params if getattr(p, "multiple", False) or getattr(p, "nargs", 1) != 1}
    mapped: dict[str, Any] = {}
    for key, item in values.items():
        name = names[key]
        if item is None:
            continue  # `key:` with no value: the option's default
        if name not in repeatable and isinstance(item, (list, dict)):
            raise click.BadParameter(f"Config file {value}: `{key}` takes one value, not {_shown(item)}; write "
                                     f"it as `{key}: VALUE` (only repeatable options take a list).")
        mapped[name] = _as_list(item) if name in repeatable else item
    ctx.default_map = {**(ctx.default_map or {}), **mapped}


def _shown(item: Any) -> str:
    text = repr(item)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_list(value: Any) -> Any:
    """A repeatable flag from YAML: a scalar is one value, a mapping is KEY=VALUE items (column_map)."""
    if isinstance(value, dict):
        return [f"{key}={item}" for key, val in value.items() for item in (val if isinstance(val, list) else [val])]
    if isinstance(value, (str, int, float)):
        return [value]
    return value


def config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add `--config FILE.yaml`; the file's values become defaults that flags override."""
    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        is_eager=True,
        expose_value=False,
        callback=_apply_config,
        help="YAML file of option values (keys as the flags, without --). Flags override it.",
    )(func)


def field_option_factory(config_class: type) -> Callable[..., Any]:
    """`option(flag, field_name, **click_kwargs)`: a click option whose help and default come from
    the config dataclass's field, so flags and config fields match one to one."""
    helps = {f.name: f.metadata.get("help", "") for f in fields(config_class)}
    defaults = {f.name: f.default for f in fields(config_class)}

    def option(flag: str, name: str, **kwargs: Any) -> Callable[..., Any]:
        if "required" not in kwargs and "is_flag" not in kwargs:
            kwargs.setdefault("default", defaults[name])
        return click.option(flag, name, help=helps[name], **kwargs)

    return option


def one_line_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn `RlaifError` (bad input) into click's one-line `Error: ...` and exit code 1; Ctrl-C into one line
    naming the command that continues the run, and exit code 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RlaifError as err:
            raise click.ClickException(str(err)) from None
        except OSError as err:  # a write rlaif does not wrap itself (a library's, a report's): still one line
            if err.errno not in DISK_ERRORS:
                raise
            where = f" {err.filename}" if err.filename else ""
            why = "the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else err.strerror
            raise click.ClickException(f"Cannot write{where}: {why}. Fix that, then rerun (with --resume where the "
                                       "command has it: finished work is kept).") from None
        except KeyboardInterrupt:
            click.echo(f"\nInterrupted; finished records are kept. Continue with: {resume_command()}", err=True)
            sys.exit(130)

    return wrapper


def resume_command(argv: list[str] | None = None) -> str:
    """The command line that continues this run: the same, with --resume instead of --overwrite."""
    argv = list(sys.argv if argv is None else argv)
    args = [a for a in argv[1:] if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["rlaif", *args])


def model_options(prefix: str = "", role: str = "Model") -> Callable[..., Any]:
    """`--model` and repeatable `--backend-option KEY=VALUE` (with `prefix`: `--judge-backend-option`, ...)."""
    flag = f"--{prefix}backend-option"
    name = f"{prefix.replace('-', '_')}backend_options"

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        return click.option(flag, name, multiple=True, metavar="KEY=VALUE",
                            help=f"{role} back end's own option, e.g. dtype=bfloat16 or batch_tokens=4096 "
                                 "(transformers), concurrency=16 or urls=http://host2:8000/v1 (server). "
                                 "Repeatable; in --config a mapping.")(func)

    return decorate


def run_mode_check(resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite contradict each other: pass one.")


def length_options(helps: dict[str, str]) -> list[Callable[..., Any]]:
    """`--max-prompt-tokens N` and `--on-too-long skip|error` (fields of every model stage's config)."""
    return [
        click.option("--max-prompt-tokens", type=click.IntRange(min=1), default=None, help=helps["max_prompt_tokens"]),
        click.option("--on-too-long", type=click.Choice(["skip", "error"]), default="skip", help=helps["on_too_long"]),
    ]


def with_length_options(helps: dict[str, str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator adding both `length_options`."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(length_options(helps)):
            func = option(func)
        return func

    return decorate


def results_and_skips(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A stage's rows split into results and skip rows (records whose prompts did not fit the model)."""
    from rlaif.io import is_skip_row  # noqa: PLC0415

    return [r for r in rows if not is_skip_row(r)], [r for r in rows if is_skip_row(r)]


def echo_skipped(skipped: list[dict[str, Any]], what: str, out: Any) -> None:
    """Say how many records were skipped as too long, with the first one's reason."""
    if skipped:
        first = skipped[0]
        click.echo(f"Skipped {len(skipped)} {what}(s) whose prompt does not fit the model (e.g. {first['id']}: "
                   f"{first['skipped']}); their rows in {out} say why. Shorten them or raise --max-prompt-tokens.")


def skip_rows_of(out: Any) -> list[dict[str, Any]]:
    """The skip rows in an output file (records left out as too long)."""
    from rlaif.io import is_skip_row, read_jsonl  # noqa: PLC0415

    return [row for row in read_jsonl(out) if is_skip_row(row)]
