"""Prompt templates: jinja2 files with a small YAML header saying how the answer is spelt.

Header (a jinja comment at the top of the file)::

    {#- rlaif:
    options: [A, B]            # the answers, in order
    spellings: ["{}", " {}"]   # how an answer may be written right after the prompt
    answer_stub: "..."          # CoT only: appended after the rationale, before the answer
    -#}

Built-in templates render in a plain environment; a template given by path is
the user's and renders in jinja2's sandbox. Both use StrictUndefined, so a
missing variable fails at once.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment

from rlaif.errors import RlaifError
from rlaif.resources import data_dir

HEADER = re.compile(r"\A\{#-?\s*rlaif:\s*\n(.*?)-?#\}", re.S)
HEADER_KEYS = {"options", "spellings", "answer_stub"}


@dataclass
class Template:
    name: str
    source: str
    options: list[str]
    spellings: list[str]
    answer_stub: str
    sha256: str
    _template: jinja2.Template

    def render(self, **variables: Any) -> str:
        try:
            return self._template.render(**variables)
        except jinja2.UndefinedError as err:
            given = ", ".join(sorted(variables))
            raise RlaifError(f"Template {self.name!r} uses an unknown variable ({err.message}); "
                             f"it can use: {given}.") from err
        except jinja2.TemplateError as err:
            raise RlaifError(f"Template {self.name!r} failed to render: {err}.") from err

    def option_spellings(self) -> dict[str, list[str]]:
        """Option -> the strings that spell it after the prompt."""
        return {opt: [s.replace("{}", opt) for s in self.spellings] for opt in self.options}


def builtin_templates() -> list[str]:
    return sorted(p.stem.replace("_", "-") for p in data_dir("templates").glob("*.j2"))


def load_template(name_or_path: str | Path, answers: bool = True) -> Template:
    """A built-in template by name (`cai-choice`) or a user's .j2 file by path (sandboxed).

    `answers=True` (scoring templates) requires the rlaif header with the answer
    options; generation templates (critique, revision) have none.
    """
    path = Path(name_or_path)
    user = bool(path.suffix)
    if not user:
        path = data_dir("templates") / f"{str(name_or_path).replace('-', '_')}.j2"
        if not path.exists():
            close = difflib.get_close_matches(str(name_or_path), builtin_templates(), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise RlaifError(f"Unknown template {str(name_or_path)!r}.{hint} Built-ins: "
                             f"{', '.join(builtin_templates())}; or pass a .j2 file path.")
    if not path.is_file():
        raise RlaifError(f"Template file {path} does not exist or is not a file: check the path.")
    source = path.read_text(encoding="utf-8")
    header = _parse_header(source, path) if answers else {"options": []}
    env_class = SandboxedEnvironment if user else jinja2.Environment
    env = env_class(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
    try:
        compiled = env.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise RlaifError(f"Template {path} has a syntax error at line {err.lineno}: {err.message}.") from err
    return Template(
        name=str(name_or_path), source=source, options=[str(o) for o in header["options"]],
        spellings=[str(s) for s in header.get("spellings") or ["{}"]], answer_stub=str(header.get("answer_stub", "")),
        sha256=hashlib.sha256(source.encode("utf-8")).hexdigest(), _template=compiled,
    )


def _parse_header(source: str, path: Path) -> dict[str, Any]:
    match = HEADER.match(source)
    if not match:
        raise RlaifError(f"Template {path} lacks its header: start it with "
                         "'{#- rlaif:' then 'options: [A, B]' and '-#}' (see templates/cai_choice.j2).")
    try:
        header = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as err:
        raise RlaifError(f"Template {path}: its rlaif header is not valid YAML.") from err
    unknown = sorted(set(header) - HEADER_KEYS)
    if unknown:
        raise RlaifError(f"Template {path}: unknown header key(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(sorted(HEADER_KEYS))}.")
    options = header.get("options")
    if not isinstance(options, list) or len(options) < 2:
        raise RlaifError(f"Template {path}: the header needs `options`, a list of at least two answers.")
    spellings = header.get("spellings") or ["{}"]
    if not all(isinstance(s, str) and "{}" in s for s in spellings):
        raise RlaifError(f"Template {path}: each spelling must contain '{{}}' where the option goes, e.g. ' {{}}'.")
    return header
