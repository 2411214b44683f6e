"""OpenAI-compatible inference servers (vLLM, llama.cpp's llama-server, SGLang) as an rlaif back end.

`--model http://HOST:PORT/v1` picks this back end; its options come from
`--backend-option KEY=VALUE` (`ServerOptions`). At load it asks the server what
it serves (model, context, weights fingerprint -> `model_id`), settles the
tokenizer (a local one must tokenize like the server) and probes once how to
read exact log-probs. Modules: client (HTTP, retries, concurrency, routing),
dialects + llamacpp / vllm / sglang (what each server is asked), tokenizer,
backend (the protocol's methods).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from rlaif.backends.server.backend import ServerBackend
from rlaif.backends.server.client import Endpoint, ServerDown, ServerPool, ServerRefused
from rlaif.backends.server.dialects import Dialect, ServerInfo, detect_dialect
from rlaif.backends.server.tokenizer import resolve_tokenizer
from rlaif.errors import RlaifError

log = logging.getLogger(__name__)

DIALECTS = ("auto", "vllm", "llamacpp", "sglang")
DEFAULT_CONCURRENCY = 8
PROBE_TEXT = "The capital of France is"


@dataclass
class ServerOptions:
    """Options of the server back end (`--backend-option KEY=VALUE`)."""

    concurrency: int | None = field(default=None, metadata={"help": "Requests in flight to each server (default: llama-server's slot count, so a slot is free for the next request of a conversation; else 8)."})
    timeout: float = field(default=300.0, metadata={"help": "Seconds to wait for one answer before trying again."})
    retries: int = field(default=5, metadata={"help": "Tries after the first on connection errors, timeouts, 429 and 5xx."})
    backoff: float = field(default=0.5, metadata={"help": "First wait between tries in seconds; doubles each try (at most 30 s)."})
    api_key: str | None = field(default_factory=lambda: os.environ.get("OPENAI_API_KEY") or None,
                                metadata={"help": "Bearer token (default: $OPENAI_API_KEY)."})
    model_name: str | None = field(default=None, metadata={"help": "Served model to use (default: the first one /v1/models lists)."})
    tokenizer: str = field(default="auto", metadata={"help": "`auto` (a local tokenizer the server names, else the server's), `default` (the embedded Gemma's), `server`, or a Hugging Face directory or hub id."})
    dialect: str = field(default="auto", metadata={"help": "Server kind: auto, vllm, llamacpp or sglang."})
    top_logprobs: int = field(default=20, metadata={"help": "k of the top-k log-probs read where a server cannot name ids (vLLM's --max-logprobs caps it)."})
    urls: tuple[str, ...] = field(default=(), metadata={"help": "More servers of the same model (comma-separated or repeated)."})
    url_file: str | None = field(default=None, metadata={"help": "A file of more server URLs, one a line (# comments)."})
    reproducible: bool = field(default=False, metadata={"help": "Generate one prompt at a time, recomputing its prompt (no llama-server prompt-cache reuse), so a seeded sample is the same text in every run; slower. Servers batch concurrent requests and their numbers depend on the batch."})
    affinity_tokens: int = field(default=128, metadata={"help": "Requests that agree on N tokens (past what every prompt of a call shares) go to the same server."})

    def __post_init__(self) -> None:
        for name in ("concurrency", "top_logprobs", "affinity_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, not {self.retries}")
        if not self.timeout > 0 or self.backoff < 0:
            raise ValueError(f"timeout must be above 0 and backoff 0 or more (got {self.timeout}, {self.backoff})")
        if self.dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, not {self.dialect!r}")
        for url in self.urls:
            check_url(url)


def check_url(url: str) -> str:
    if not str(url).startswith(("http://", "https://")):
        raise RlaifError(f"A server URL must start with http:// or https://, not {url!r} (e.g. http://HOST:PORT/v1).")
    return str(url)


def server_root(url: str) -> str:
    """`http://HOST:PORT/v1/` -> `http://HOST:PORT` (the native endpoints live beside /v1)."""
    root = check_url(url).strip().rstrip("/")
    return root[:-3] if root.endswith("/v1") else root


def server_urls(spec: str, options: ServerOptions) -> list[str]:
    """The spec's URL, then `urls`, then the lines of `url_file`; roots, without repeats."""
    urls = [spec, *options.urls]
    if options.url_file:
        path = Path(options.url_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise RlaifError(f"Cannot read url_file {path}: {err.strerror or err}.") from err
        urls += [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]
    return list(dict.fromkeys(server_root(u) for u in urls))


def describe_all(endpoints: list[Endpoint], options: ServerOptions) -> tuple[Dialect, ServerInfo]:
    """The dialect and model of the servers, each endpoint's concurrency set; one that does not answer is
    dropped (all: an error)."""
    found: list[tuple[Endpoint, Dialect, ServerInfo]] = []
    for endpoint in endpoints:
        try:
            dialect = detect_dialect(endpoint, options.dialect, options.top_logprobs)
            info = dialect.describe(endpoint, options.model_name)
            endpoint.set_concurrency(options.concurrency or info.extra.get("slots") or DEFAULT_CONCURRENCY)
            found.append((endpoint, dialect, info))
        except ServerDown as down:
            endpoint.down = down
            if len(endpoints) == 1:
                raise RlaifError(f"{down}; start it or check the URL (http://HOST:PORT/v1).") from down
            log.warning("%s; going on without it.", down)
        except ServerRefused as err:
            raise RlaifError(f"{endpoint.url} is not a server rlaif can use: {err}.") from err
    if not found:
        raise RlaifError(f"None of the {len(endpoints)} servers answers; start them or check the URLs.")
    first_endpoint, dialect, info = found[0]
    for endpoint, other, other_info in found[1:]:
        if (other.name, other_info.model_id) != (dialect.name, info.model_id):
            raise RlaifError(f"{endpoint.url} serves {other_info.model_id} ({other.name}) but {first_endpoint.url} "
                             f"serves {info.model_id} ({dialect.name}); every URL must serve the same model.")
    return dialect, info


class ServerFactory:
    name = "server"
    options_class = ServerOptions

    def accepts(self, spec: str) -> bool:
        return spec.startswith(("http://", "https://"))

    def load(self, spec: str, options: ServerOptions | None = None) -> ServerBackend:
        options = options or ServerOptions()
        endpoints = [Endpoint(url, options.api_key, options.timeout, options.retries, options.backoff,
                              options.concurrency or DEFAULT_CONCURRENCY) for url in server_urls(spec, options)]
        dialect, info = describe_all(endpoints, options)
        pool = ServerPool(endpoints)
        tokenizer, tokenizer_name = resolve_tokenizer(options.tokenizer, dialect, info, pool)
        probe_ids = tokenizer.encode(PROBE_TEXT, add_special_tokens=True)
        scoring = ""
        for endpoint in pool.alive:
            try:
                scoring = dialect.probe(endpoint, probe_ids)
            except ServerDown as down:
                pool.mark_down(endpoint, down)
        if not pool.alive:
            raise RlaifError(f"{endpoints[0].down}; start the server(s) and try again.")
        log.info("Server back end: %s on %s (%s; tokenizer %s; scoring by %s).", info.model_id,
                 ", ".join(e.url for e in pool.alive), dialect.name, tokenizer_name, scoring)
        return ServerBackend(pool, dialect, info, tokenizer, options.affinity_tokens, scoring, options.reproducible)


SERVER_FACTORY = ServerFactory()

__all__ = ["SERVER_FACTORY", "ServerBackend", "ServerFactory", "ServerOptions", "server_root", "server_urls"]
