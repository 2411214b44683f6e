"""YAML configs for the CLI: `--config run.yaml` fills a command's options.

Keys are the command's option names (dashes or underscores); a key the command
does not know is an error, so a typo never silently does nothing. Flags given
on the command line override the file (click's `default_map`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rlaif.errors import RlaifError


def load_yaml_config(path: str | Path, valid: set[str]) -> dict[str, Any]:
    """Option values from a YAML mapping, keys normalised to parameter names."""
    path = Path(path)
    if not path.exists():
        raise RlaifError(f"Config file {path} does not exist: check the path.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise RlaifError(f"Config file {path} is not valid YAML{at}: fix its syntax.") from err
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
