"""Prompt templates: jinja2 files with a small YAML header saying how the answer is spelt.

Header (a jinja comment at the top of the file)::

    {#- rlaif:
    options: [A, B]            # the answers, in order
    spellings: ["{}", " {}"]   # how an answer may be written right after the prompt
    answer_stub: "..."          # CoT only: appended after the rationale, before the answer
    -#}

A bare name (`cai-choice`) resolves only to a built-in template; anything
else is a path to a user's file. Every template, built-in or not, renders in
jinja2's sandbox with StrictUndefined (a missing variable fails at once), with
caps on the size of every value it builds, on its loops and time, and on the
rendered length (rlaif/sandbox.py), so a template can neither run code nor
exhaust memory: each is a one-line error.
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
from jinja2.exceptions import SecurityError

from rlaif.errors import RlaifError
from rlaif.resources import data_dir
from rlaif.sandbox import Sandbox, budget

BUILTIN_NAME = re.compile(r"\A[a-z0-9][a-z0-9_-]*\Z")
MAX_RENDERED_CHARS = 4_000_000  # far above any prompt; a runaway loop stops here
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
            with budget():
                return self._render(variables)
        except (SecurityError, OverflowError, MemoryError, RecursionError) as err:
            raise RlaifError(f"Template {self.name!r} was stopped by the sandbox ({err}); templates may only "
                             "format their variables: fix the template.") from err
        except jinja2.UndefinedError as err:
            given = ", ".join(sorted(variables))
            raise RlaifError(f"Template {self.name!r} uses an unknown variable ({err.message}); "
                             f"it can use: {given}.") from err
        except jinja2.TemplateError as err:
            raise RlaifError(f"Template {self.name!r} failed to render: {err}.") from err
        except RlaifError:
            raise
        except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as err:  # 1/0, a bad argument
            raise RlaifError(f"Template {self.name!r} failed to render ({type(err).__name__}: {err}); "
                             "fix the template.") from err

    def _render(self, variables: dict[str, Any]) -> str:
        parts, size = [], 0
        for part in self._template.generate(**variables):
            size += len(part)
            if size > MAX_RENDERED_CHARS:
                raise RlaifError(f"Template {self.name!r} renders more than {MAX_RENDERED_CHARS:,} characters; "
                                 "it loops too long: fix the template.")
            parts.append(part)
        return "".join(parts)

    def option_spellings(self) -> dict[str, list[str]]:
        """Option -> the strings that spell it after the prompt."""
        return {opt: [s.replace("{}", opt) for s in self.spellings] for opt in self.options}


def builtin_templates() -> list[str]:
    return sorted(p.stem.replace("_", "-") for p in data_dir("templates").glob("*.j2"))


def template_path(name_or_path: str | Path) -> tuple[Path, bool]:
    """(file, is built-in): a bare name is a built-in only; anything else is a user's path."""
    text = str(name_or_path)
    if BUILTIN_NAME.match(text) and not Path(text).suffix:
        path = data_dir("templates") / f"{text.replace('-', '_')}.j2"
        if path.is_file() and path.parent == data_dir("templates"):
            return path, True
        if not Path(text).exists():
            close = difflib.get_close_matches(text, builtin_templates(), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise RlaifError(f"Unknown template {text!r}.{hint} Built-ins: {', '.join(builtin_templates())}; "
                             "or pass the path of a .j2 file.")
    path = Path(text).expanduser()
    if not path.is_file():
        raise RlaifError(f"Template file {path} does not exist or is not a file: check the path.")
    return path, False


def load_template(name_or_path: str | Path, answers: bool = True) -> Template:
    """A built-in template by name (`cai-choice`) or a user's file by path; both render sandboxed.

    `answers=True` (scoring templates) requires the rlaif header with the answer
    options; generation templates (critique, revision) have none.
    """
    path, _builtin = template_path(name_or_path)
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RlaifError(f"Template file {path} is not UTF-8 text (byte {err.start}); save it as UTF-8.") from err
    header = _parse_header(source, path) if answers else {"options": []}
    env = Sandbox(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
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
