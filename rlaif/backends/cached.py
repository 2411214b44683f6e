"""The raw-result cache as a wrapper around any back end.

`CachedBackend(backend, cache)` answers `token_logprobs` and `generate` from a
content-addressed store (rlaif.cache.ResultCache) and sends only the misses to
the back end, in one call, so batching and prefix sharing still see them
together. Keys hash the back end's resolved `model_id` with the request (token
ids and reads; prompt and decoding settings, whose seed carries the sample
index): a retrained model, another dtype or another served model never hits an
old entry. Values are raw log-probs and texts, so parsing can be redone without
calling the model, and a killed run resumes for free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rlaif.backends import Backend, GenerationSettings, TokenRequest, load_backend, settings_list
from rlaif.cache import NullCache, ResultCache, cache_key
from rlaif.resources import cache_root


class CachedBackend:
    """A back end whose results go through a ResultCache (or a NullCache: no caching)."""

    def __init__(self, backend: Backend, cache: ResultCache | NullCache):
        self.backend = backend
        self.cache = cache

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    @property
    def tokenizer(self) -> Any:
        return self.backend.tokenizer

    @property
    def context_length(self) -> int | None:
        return getattr(self.backend, "context_length", None)

    def __getattr__(self, name: str) -> Any:  # back-end specifics (stats, model) pass through
        return getattr(self.__dict__["backend"], name)

    def token_logprobs(self, requests: list[TokenRequest]) -> list[list[float]]:
        keys = [cache_key(self.model_id, "logprobs", [list(r.ids), [list(x) for x in r.reads]]) for r in requests]
        return self._through(keys, lambda todo: self.backend.token_logprobs([requests[i] for i in todo]))

    def generate(self, prompts: list[str], settings: GenerationSettings | Sequence[GenerationSettings]) -> list[str]:
        per = settings_list(settings, len(prompts))
        keys = [cache_key(self.model_id, "generate", [p, asdict(s)]) for p, s in zip(prompts, per)]
        return self._through(keys, lambda todo: self.backend.generate([prompts[i] for i in todo], [per[i] for i in todo]))

    def _through(self, keys: list[str], compute: Any) -> list[Any]:
        found = self.cache.get_many(keys)
        todo, seen = [], set()
        for i, key in enumerate(keys):
            if key not in found and key not in seen:  # a request asked twice in one call runs once
                todo.append(i)
                seen.add(key)
        if todo:
            fresh = dict(zip((keys[i] for i in todo), compute(todo)))
            self.cache.put_many(fresh)
            found.update(fresh)
        return [found[key] for key in keys]

    def close(self) -> None:
        self.cache.close()
        close = getattr(self.backend, "close", None)
        if close:
            close()


def open_cache(cache_dir: str | None, no_cache: bool) -> ResultCache | NullCache:
    return NullCache() if no_cache else ResultCache(Path(cache_dir or cache_root()) / "results.sqlite")


def open_backend(spec: str, options: Any = None, cache_dir: str | None = None, no_cache: bool = False,
                 backend: Backend | None = None) -> CachedBackend:
    """The back end for `spec` (or the given one) behind the raw-result cache: what every stage calls."""
    return CachedBackend(backend or load_backend(spec, options), open_cache(cache_dir, no_cache))
