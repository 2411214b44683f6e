"""YAML configs for the CLI: `--config run.yaml` fills a command's options.

Keys are the command's option names (dashes or underscores); a key the command
does not know is an error, so a typo never silently does nothing. Flags given
on the command line override the file (click's `default_map`). Configs are
data: `yaml.safe_load`, and a tag that would build an object (`!!python/...`)
is refused with its line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from rlaif.errors import RlaifError


def read_yaml(path: str | Path, what: str) -> Any:
    """The data of a YAML file (safe_load), every failure one line: missing, not UTF-8, a tag, bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise RlaifError(f"{what} {path} does not exist or is not a file: check the path.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        from rlaif.io import first_non_utf8_line  # noqa: PLC0415

        raise (first_non_utf8_line(path) or RlaifError(f"{what} {path} is not UTF-8 text; save it as UTF-8.")) from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RlaifError(yaml_error_message(err, f"{what} {path}")) from err


def yaml_error_message(err: yaml.YAMLError, where: str) -> str:
    """One line for a YAML error: the line, and for a tag that no safe loader builds, that tags are not allowed."""
    mark = getattr(err, "problem_mark", None)
    at = f" at line {mark.line + 1}" if mark else ""
    problem = str(getattr(err, "problem", "") or "")
    if isinstance(err, yaml.constructor.ConstructorError) and "tag" in problem:
        quoted = re.search(r"'([^']*)'", problem)
        tag = (quoted.group(1) if quoted else problem).replace("tag:yaml.org,2002:", "!!")
        return (f"{where} uses the YAML tag {tag!r}{at}: tags are not allowed (the file is plain data, it cannot "
                "build objects or run code); remove the tag and write a plain value.")
    detail = f" ({problem})" if problem else ""
    return f"{where} is not valid YAML{at}{detail}: fix its syntax."


def load_yaml_config(path: str | Path, valid: set[str]) -> dict[str, Any]:
    """Option values from a YAML mapping, keys normalised to parameter names."""
    data = read_yaml(path, "Config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RlaifError(f"Config file {path} must be a mapping of option: value.")
    values = {str(key).replace("-", "_"): value for key, value in data.items()}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise RlaifError(
            f"Config file {path} has unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}."
        )
    return values
