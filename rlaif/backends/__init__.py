"""Model back ends behind one small protocol, and the registry that picks one from `--model`.

What every stage may ask of a model, and nothing else:

* `token_logprobs(requests)`: for token-id sequences, the log-probs of named
  token ids at named positions (`TokenRequest`). A server can only read the
  next token after a prefix, so a back end may split a request by read position.
* `generate(prompts, settings)`: one continuation per prompt, each with its own
  `GenerationSettings` (its seed makes sample i of a prompt the same text
  whatever it is batched with).
* `tokenizer`: encode / decode / chat rendering (`Tokenizer`, a subset of a
  Hugging Face tokenizer's API, so a local HF tokenizer is one as it is).
* `model_id`: the resolved identity (hub commit, weight stamp, server model and
  fingerprint); it goes into every cache key and into the resume check.
* `context_length`: the longest sequence the model takes (None: unknown).

Back-end settings (batch tokens, dtype, concurrency, URLs) are the back end's
own options (`--backend-option KEY=VALUE`), checked by the back end itself.

`load_backend(spec, options)` maps a spec to a back end: `default`, a Hugging
Face id or directory -> transformers; `http(s)://HOST:PORT/v1` -> an
OpenAI-compatible server; `NAME:REST` -> the back end registered as NAME
(built-ins `hf` and `server`, or a third party's through the entry-point group
`rlaif.backends`, whose objects follow `BackendFactory`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from rlaif.errors import RlaifError

ENTRY_POINT_GROUP = "rlaif.backends"


@dataclass(frozen=True)
class TokenRequest:
    """Read log-probs from one sequence: each read is (position, token id), asking
    log P(token at position + 1 = token id | ids[: position + 1])."""

    ids: tuple[int, ...]
    reads: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class GenerationSettings:
    """How one continuation is decoded. `stop`: strings that end it (the text is cut before them)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()


@runtime_checkable
class Tokenizer(Protocol):
    """What rlaif uses of a tokenizer (a Hugging Face tokenizer is one as it is)."""

    bos_token: str | None
    eos_token: str | None
    chat_template: str | None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = False,
                            add_generation_prompt: bool = True) -> str: ...


class Backend(Protocol):
    model_id: str
    tokenizer: Tokenizer
    context_length: int | None

    def token_logprobs(self, requests: list[TokenRequest]) -> list[list[float]]: ...

    def generate(self, prompts: list[str], settings: Sequence[GenerationSettings]) -> list[str]: ...


class BackendFactory(Protocol):
    """What a registered back end provides (an entry point in group `rlaif.backends` names one)."""

    name: str
    options_class: type  # a dataclass of its options; `parse_options` fills it from strings or YAML values

    def accepts(self, spec: str) -> bool: ...  # may it take this --model spec without a `NAME:` prefix?

    def load(self, spec: str, options: Any) -> Backend: ...


def settings_list(settings: GenerationSettings | Sequence[GenerationSettings], n: int) -> list[GenerationSettings]:
    """One settings per prompt (a single settings is shared by all)."""
    if isinstance(settings, GenerationSettings):
        return [settings] * n
    settings = list(settings)
    if len(settings) != n:
        raise ValueError(f"generate got {n} prompts but {len(settings)} settings")
    return settings


# -- options ------------------------------------------------------------------------------------------------------


def parse_option_items(items: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """`["dtype=bfloat16", ...]` (flags) or a YAML mapping -> {key: value}."""
    if not items:
        return {}
    if isinstance(items, Mapping):
        return {str(k).replace("-", "_"): v for k, v in items.items()}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise RlaifError(f"Bad --backend-option {item!r}: write it as KEY=VALUE, e.g. dtype=bfloat16.")
        key = key.strip().replace("-", "_")
        if key in out:  # a repeated key collects values (several server URLs)
            out[key] = [*(out[key] if isinstance(out[key], list) else [out[key]]), value.strip()]
        else:
            out[key] = value.strip()
    return out


def parse_options(options_class: type, values: Mapping[str, Any], backend: str) -> Any:
    """Fill a back end's options dataclass from strings or YAML values; unknown keys and bad values are errors."""
    fields = {f.name: f for f in dataclasses.fields(options_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise RlaifError(f"The {backend} back end has no option {unknown[0]!r}.{hint} "
                         f"Its options: {', '.join(sorted(fields))}.")
    hints = typing.get_type_hints(options_class)
    kwargs = {key: _coerce(value, hints[key], key, backend) for key, value in values.items()}
    try:
        return options_class(**kwargs)
    except (TypeError, ValueError) as err:
        raise RlaifError(f"Bad {backend} back-end option: {err}") from err


def _coerce(value: Any, hint: Any, key: str, backend: str) -> Any:
    """A flag's string (or a YAML scalar) as the field's type: bool, int, float, str, tuple of str, optional."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    bad = RlaifError(f"The {backend} back-end option {key}={value!r} must be {_type_name(hint)}.")
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v.strip()]
        return tuple(str(v).strip() for v in items)
    if isinstance(value, (list, tuple)):
        raise RlaifError(f"The {backend} back-end option {key} takes one value, got {len(value)}.")
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise bad
    if hint in (int, float):
        if isinstance(value, bool):
            raise bad
        try:
            number = hint(value)
        except (TypeError, ValueError):
            raise bad from None
        if hint is int and isinstance(value, float) and value != int(value):
            raise bad
        return number
    return str(value) if hint is str else value


def _type_name(hint: Any) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text"}.get(hint, str(hint))


# -- registry -----------------------------------------------------------------------------------------------------


def registry() -> dict[str, BackendFactory]:
    """Built-in back ends, then those installed packages register under `rlaif.backends`."""
    from importlib.metadata import entry_points  # noqa: PLC0415

    from rlaif.backends.hf.factory import HF_FACTORY  # noqa: PLC0415
    from rlaif.backends.server import SERVER_FACTORY  # noqa: PLC0415

    found: dict[str, BackendFactory] = {"hf": HF_FACTORY, "server": SERVER_FACTORY}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in found:
            continue  # built-ins cannot be replaced by a plug-in
        try:
            factory = point.load()
        except Exception as err:  # noqa: BLE001 (a broken plug-in must not stop rlaif; name it)
            raise RlaifError(f"The back-end plug-in {point.name!r} ({point.value}) failed to load: {err}. "
                             "Fix or uninstall the package that provides it.") from err
        found[point.name] = factory() if isinstance(factory, type) else factory
    return found


def resolve_spec(spec: str) -> tuple[BackendFactory, str]:
    """(factory, spec for it): `NAME:REST` picks NAME; otherwise the first factory that accepts the spec."""
    spec = str(spec).strip()
    if not spec:
        raise RlaifError("--model is empty: pass `default`, a Hugging Face id or directory, or a server URL.")
    factories = registry()
    name, sep, rest = spec.partition(":")
    if sep and name in factories and not rest.startswith("//"):
        return factories[name], rest
    for factory in [f for n, f in factories.items() if n not in ("hf", "server")] + [factories["server"], factories["hf"]]:
        if factory.accepts(spec):
            return factory, spec
    raise RlaifError(f"No back end takes --model {spec!r}: pass `default`, a Hugging Face id or directory, a server "
                     f"URL http://HOST:PORT/v1, or NAME:SPEC with NAME one of {', '.join(sorted(factories))}.")


def load_backend(spec: str, options: Mapping[str, Any] | Sequence[str] | None = None) -> Backend:
    """The back end for `spec` with its options (flag items or a mapping), checked by that back end."""
    factory, rest = resolve_spec(spec)
    parsed = parse_options(factory.options_class, parse_option_items(options), factory.name)
    return factory.load(rest, parsed)


def check_options(spec: str, options: Mapping[str, Any] | Sequence[str] | None) -> None:
    """Fail on bad back-end options before any work (without loading the model)."""
    factory, _ = resolve_spec(spec)
    parse_options(factory.options_class, parse_option_items(options), factory.name)
