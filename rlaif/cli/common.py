"""Shared CLI plumbing: `--config` YAML defaults and one-line errors."""

from __future__ import annotations

import functools
import shlex
import sys
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import click

from rlaif.config import load_yaml_config
from rlaif.errors import RlaifError


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
    mapped = {names[key]: v for key, v in values.items()}
    mapped = {k: _as_list(v) if k in repeatable else v for k, v in mapped.items()}
    ctx.default_map = {**(ctx.default_map or {}), **mapped}


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
