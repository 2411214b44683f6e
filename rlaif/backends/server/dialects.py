"""What differs between servers (a `Dialect`), what a server says about its model (`ServerInfo`), and detection.

A dialect turns the back end's few questions into one server's requests:

* `next_token_logprobs(endpoint, ids, wanted)`: log P(t | ids) for every t in
  `wanted`, exact (the model's full-softmax log-probs at temperature 1) or an
  RlaifError naming what the server lacks; never an approximation;
* `complete(endpoint, ids, settings, seed, reuse_cache)`: a continuation of `ids`;
* `tokenize` / `detokenize` / `render_chat`: the server's tokenizer.

Implementations: llama.cpp's llama-server (`llamacpp.py`), vLLM (`vllm.py`),
SGLang (`sglang.py`). `detect_dialect` asks `/v1/models`, whose `owned_by` each
of them fills with its own name.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from rlaif.backends import GenerationSettings
from rlaif.backends.server.client import Endpoint, ServerDown, ServerRefused
from rlaif.errors import RlaifError

LOWEST_LOGPROB = -1e30  # llama-server writes log(0) as the lowest float; read anything below this as -inf


@dataclass
class ServerInfo:
    """What a server reports about the model it serves."""

    model: str  # the served name, sent as `model` in requests
    fingerprint: dict[str, Any]  # what identifies the weights (no timestamps, no run settings)
    context_length: int | None = None
    vocab_size: int | None = None
    tokenizer_hint: str | None = None  # a path or hub id that may name the tokenizer locally
    bos_token: str | None = None
    eos_token: str | None = None
    chat_template: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        """`server:NAME@<12 hex>`: the served name and a digest of the fingerprint."""
        digest = hashlib.sha256(json.dumps(self.fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return f"server:{display_name(self.model)}@{digest}"


def display_name(model: str) -> str:
    """A served name as it reads in a model id: a file path becomes its file name without `.gguf`."""
    if model.startswith("/") or "\\" in model:
        name = PurePosixPath(model.replace("\\", "/")).name
        return name[:-5] if name.lower().endswith(".gguf") else name
    return model


def as_logprob(value: Any) -> float:
    """A reported log-prob as a float; the lowest float (llama-server's log 0) as -inf."""
    number = float(value)
    return -math.inf if number <= LOWEST_LOGPROB else number


def served_models(endpoint: Endpoint) -> list[dict[str, Any]]:
    """The entries of `/v1/models` (every OpenAI-compatible server has it)."""
    body = endpoint.get("/v1/models")
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not data:
        raise RlaifError(f"{endpoint.url}/v1/models lists no model: is this an OpenAI-compatible server with a "
                         "model loaded?")
    return [entry for entry in data if isinstance(entry, dict) and "id" in entry]


def choose_model(endpoint: Endpoint, entries: list[dict[str, Any]], wanted: str | None) -> dict[str, Any]:
    """The entry of the served model: `wanted` (the model_name option) or else the first one listed."""
    if wanted is None:
        return entries[0]
    for entry in entries:
        if wanted in (entry.get("id"), *entry.get("aliases", ())):
            return entry
    names = ", ".join(str(e["id"]) for e in entries)
    raise RlaifError(f"{endpoint.url} does not serve a model named {wanted!r}; it serves: {names}. "
                     "Fix --backend-option model_name=NAME.")


class Dialect:
    """One kind of server. Subclasses fill in the requests; `probe` runs once at load."""

    name = "base"
    # True when a server shares cached prefix blocks between requests (vLLM, SGLang): followers of one
    # prefix may then run side by side. False (llama-server): a prefix is reused only by the next request
    # on the same slot, so requests that share a prefix go one after another.
    shares_prefix_cache = True

    def __init__(self, top_logprobs: int = 20):
        self.top_logprobs = top_logprobs
        self.info: ServerInfo | None = None
        self.computed_tokens = 0  # prompt tokens the servers say they computed for scoring (where they say)
        self._count_lock = threading.Lock()

    def count_computed(self, tokens: Any) -> None:
        if isinstance(tokens, int) and tokens >= 0:
            with self._count_lock:
                self.computed_tokens += tokens

    def describe(self, endpoint: Endpoint, model_name: str | None) -> ServerInfo:
        raise NotImplementedError

    def probe(self, endpoint: Endpoint, ids: Sequence[int]) -> str:
        """Check once that exact scoring works on this server; a short description of how it is done."""
        raise NotImplementedError

    def next_token_logprobs(self, endpoint: Endpoint, ids: Sequence[int], wanted: Sequence[int]) -> dict[int, float]:
        raise NotImplementedError

    def complete(self, endpoint: Endpoint, ids: Sequence[int], settings: GenerationSettings, seed: int,
                 reuse_cache: bool = True) -> str:
        raise NotImplementedError

    def tokenize(self, endpoint: Endpoint, text: str, add_special_tokens: bool) -> list[int]:
        raise NotImplementedError

    def detokenize(self, endpoint: Endpoint, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def render_chat(self, endpoint: Endpoint, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        raise RlaifError(f"The {self.name} server has no endpoint that renders a chat template; pass "
                         "--backend-option tokenizer=DIR_OR_HUB_ID (the served model's tokenizer) to render it locally.")

    def missing(self, endpoint: Endpoint, ids: Sequence[int], wanted: Sequence[int], got: dict[int, float],
                what: str) -> RlaifError:
        lost = sorted(set(wanted) - set(got))[:5]
        return RlaifError(f"{endpoint.url} returned no log-prob for token id(s) {lost} after {len(ids)} tokens "
                          f"({what}); rlaif never approximates a missing one. {self.upgrade_hint()}")

    def upgrade_hint(self) -> str:
        return "Use a newer server."


def refused(err: ServerRefused, doing: str) -> RlaifError:
    """A server's 4xx answer as a one-line error."""
    return RlaifError(f"The server refused {doing}: {err}.")


def generation_seed(seed: int, prompt: str) -> int:
    """The per-prompt seed (31 bits, every server takes it): the same settings and prompt give the same text."""
    return int(hashlib.sha256(f"{seed}:{prompt}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first stop string (servers stop there too; this also drops one a server left in)."""
    ends = [text.find(s) for s in stops if s and s in text]
    return text[:min(ends)] if ends else text


def detect_dialect(endpoint: Endpoint, wanted: str, top_logprobs: int) -> Dialect:
    """The dialect named by the `dialect` option, or (`auto`) the one the server names in `/v1/models`."""
    from rlaif.backends.server.llamacpp import LlamaCppDialect  # noqa: PLC0415
    from rlaif.backends.server.sglang import SGLangDialect  # noqa: PLC0415
    from rlaif.backends.server.vllm import VLLMDialect  # noqa: PLC0415

    dialects = {"llamacpp": LlamaCppDialect, "vllm": VLLMDialect, "sglang": SGLangDialect}
    if wanted != "auto":
        return dialects[wanted](top_logprobs)
    try:
        entries = served_models(endpoint)
    except ServerRefused as err:
        raise RlaifError(f"{endpoint.url} is not an OpenAI-compatible server ({err}); check the URL "
                         "(http://HOST:PORT/v1).") from err
    owner = str(entries[0].get("owned_by", "")).lower()
    if owner in dialects:
        return dialects[owner](top_logprobs)
    for name, path in (("llamacpp", "/props"), ("sglang", "/get_model_info"), ("vllm", "/version")):
        try:
            endpoint.get(path, retries=0)
        except (ServerRefused, ServerDown):
            continue
        return dialects[name](top_logprobs)
    raise RlaifError(f"Cannot tell which server runs at {endpoint.url} (/v1/models says owned_by={owner!r}); "
                     "pass --backend-option dialect=vllm, llamacpp or sglang.")
