"""`ServerBackend`: rlaif's back-end protocol over one or several inference servers.

Scoring: a read (position p, token t) of a TokenRequest asks log P(t | ids[:p+1]),
so reads are grouped by that prefix, identical prefixes are merged across
requests, and each distinct prefix is one request for the wanted ids (a
multi-token option spelling is one prefix per trie node). Prefixes are sorted,
so the ones that share a start sit together, and cut into groups at the points
where they stop sharing more than what every prompt of the call shares (the
template's header). A group goes to one server, picked by a hash of its first
`affinity_tokens` tokens after that call-wide start (so a long few-shot header
does not send everything to one server); its first prefix runs alone, then the rest, which
find the shared part in the server's prefix cache: one after another on
llama-server (a slot reuses its own cache), side by side on vLLM and SGLang
(they share cached blocks between requests). Groups run in parallel, up to
`concurrency` requests in flight per server (llama-server: its slot count, so
the slot a request leaves warm is free when the next one of its group comes).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlaif.backends import GenerationSettings, TokenRequest, settings_list
from rlaif.backends.server.client import Job, ServerPool
from rlaif.backends.server.dialects import Dialect, ServerInfo, cut_at_stops, generation_seed
from rlaif.backends.server.tokenizer import ServerTokenizer
from rlaif.errors import RlaifError

log = logging.getLogger(__name__)

GROUP_MIN_SHARED = 16  # tokens beyond the call-wide common start that make two prefixes one group


@dataclass
class ServerStats:
    """What the back end asked of its servers."""

    prefixes: int = 0  # distinct scoring prefixes (one request each, more when a top-k had to be widened)
    reads: int = 0  # (prefix, token) log-probs returned
    generations: int = 0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def route_key(ids: Sequence[int], start: int, affinity_tokens: int) -> bytes:
    """The routing key: `affinity_tokens` ids from `start` (where the call's prompts stop all agreeing)."""
    head = list(ids[start:start + affinity_tokens])
    return struct.pack(f"<{len(head)}q", *head)


def shared_start(sorted_ids: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all of these (sorted) sequences share: the first and last share what all do."""
    return common_prefix(sorted_ids[0], sorted_ids[-1]) if sorted_ids else 0


def plan(prefixes: Sequence[tuple[int, ...]], chain: bool, affinity_tokens: int) -> list[tuple[bytes, int | None]]:
    """(routing key, job it follows) for each of the sorted `prefixes`."""
    if not prefixes:
        return []
    shared = shared_start(prefixes)
    out: list[tuple[bytes, int | None]] = []
    leader = 0
    for i, ids in enumerate(prefixes):
        if i and common_prefix(prefixes[i - 1], ids) < shared + GROUP_MIN_SHARED:
            leader = i
        after = None if i == leader else (i - 1 if chain else leader)
        out.append((route_key(prefixes[leader], shared, affinity_tokens), after))
    return out


class ServerBackend:
    """Exact option log-probs and generation from OpenAI-compatible servers of one model."""

    def __init__(self, pool: ServerPool, dialect: Dialect, info: ServerInfo, tokenizer: Any,
                 affinity_tokens: int = 128, scoring: str = "", reproducible: bool = False):
        self.pool, self.dialect, self.info = pool, dialect, info
        self.tokenizer = tokenizer
        self.model_id = info.model_id
        self.context_length = info.context_length
        self.affinity_tokens = affinity_tokens
        self.scoring = scoring  # how the probe found it scores, for logs and benchmarks
        self.reproducible = reproducible  # generation one at a time, prompts recomputed
        self.stats = ServerStats()

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.pool.endpoints]

    def token_logprobs(self, requests: list[TokenRequest]) -> list[list[float]]:
        wanted: dict[tuple[int, ...], set[int]] = {}
        for request in requests:
            ids = tuple(request.ids)
            for position, token in request.reads:
                if not 0 <= position < len(ids):
                    raise ValueError(f"read position {position} is outside a sequence of {len(ids)} tokens")
                wanted.setdefault(ids[:position + 1], set()).add(int(token))
        prefixes = sorted(wanted)
        self._check_fits(max((len(p) for p in prefixes), default=0) + 1, "scored")
        jobs = [Job(key, self._scorer(ids, sorted(wanted[ids])), after)
                for ids, (key, after) in zip(prefixes, plan(prefixes, not self.dialect.shares_prefix_cache,
                                                              self.affinity_tokens))]
        values = dict(zip(prefixes, self.pool.run(jobs)))
        self.stats.prefixes += len(prefixes)
        self.stats.reads += sum(len(v) for v in wanted.values())
        return [[values[tuple(r.ids[:p + 1])][int(t)] for p, t in r.reads] for r in requests]

    def _scorer(self, ids: tuple[int, ...], wanted: list[int]):
        return lambda endpoint: self.dialect.next_token_logprobs(endpoint, ids, wanted)

    def _check_fits(self, tokens: int, what: str) -> None:
        if self.context_length and tokens > self.context_length:
            raise RlaifError(f"A sequence of {tokens} tokens to be {what} does not fit the server's context of "
                             f"{self.context_length} tokens; start the server with a longer context "
                             "(llama-server -c, vllm --max-model-len) or shorten the inputs.")

    def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of each prompt; no second BOS for a prompt that starts with the BOS text (a chat template's)."""
        bos = getattr(self.tokenizer, "bos_token", None)

        def encode(prompt: str) -> list[int]:
            return list(self.tokenizer.encode(prompt, add_special_tokens=not (bos and prompt.startswith(bos))))

        if not isinstance(self.tokenizer, ServerTokenizer):
            return [encode(p) for p in prompts]
        return self.pool.run([Job(p[:512].encode(), lambda _endpoint, p=p: encode(p)) for p in prompts])

    def generate(self, prompts: list[str], settings: GenerationSettings | Sequence[GenerationSettings]) -> list[str]:
        """One continuation per prompt (sent as token ids), many in flight; text cut at the `stop` strings."""
        per = settings_list(settings, len(prompts))
        all_ids = self.encode_prompts(prompts)
        shared = shared_start(sorted(all_ids)) if len(all_ids) > 1 else 0
        jobs = []
        for prompt, ids, s in zip(prompts, all_ids, per):
            self._check_fits(len(ids) + 1, "continued")
            if self.context_length:
                s = GenerationSettings(min(s.max_new_tokens, self.context_length - len(ids)), s.temperature,
                                       s.top_p, s.seed, s.stop)
            after = len(jobs) - 1 if self.reproducible and jobs else None  # one at a time: a chain
            jobs.append(Job(route_key(ids, shared, self.affinity_tokens),
                            self._completer(ids, s, generation_seed(s.seed, prompt)), after))
        self.stats.generations += len(jobs)
        return self.pool.run(jobs)

    def _completer(self, ids: list[int], settings: GenerationSettings, seed: int):
        reuse = not self.reproducible
        return lambda endpoint: cut_at_stops(self.dialect.complete(endpoint, ids, settings, seed, reuse), settings.stop)
