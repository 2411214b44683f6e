"""vLLM's OpenAI-compatible server (request and response shapes from vllm/entrypoints/openai/completion/protocol.py
and serving.py on vLLM main after PR #43463, merged 2026-07-13).

Scoring sends `/v1/completions` with the prompt as token ids, `max_tokens: 1` and
`return_tokens_as_token_ids: true`, so `top_logprobs` is keyed `"token_id:N"`.
vLLM's default `--logprobs-mode raw_logprobs` computes them from the raw logits
before temperature, allowed-token masks or top-k/top-p (v1 Sampler, step 1), so
they are the model's full-softmax log-probs. The best way is picked once at load:

* `logprob_token_ids` (CompletionRequest field from PR #43463; at most 128 ids;
  needs `logprobs` set): the log-probs of exactly the wanted ids;
* otherwise the top k (`logprobs: k`, at most the server's `--max-logprobs`,
  20 by default), and for a wanted id outside it one request with
  `allowed_token_ids: [id]`: the sampled token is then that id and its reported
  log-prob is the raw one (checked at load against the top-k answer, so a server
  started with `--logprobs-mode processed_logprobs` is refused, not trusted).

Older vLLM ignores a field it does not know (OpenAIBaseModel has
`extra="allow"`), so every answer is checked to hold every requested id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rlaif.backends import GenerationSettings
from rlaif.backends.server.client import Endpoint, ServerRefused
from rlaif.backends.server.dialects import Dialect, ServerInfo, choose_model, refused, served_models
from rlaif.errors import RlaifError

MAX_LOGPROB_TOKEN_IDS = 128  # vllm/sampling_params.py MAX_LOGPROB_TOKEN_IDS
VLLM_FLOOR = -9999.0  # vLLM clamps reported log-probs at -9999.0 (serving.py); exp() of it is 0 anyway
RAW_TOLERANCE = 1e-3


def _token_id(key: str) -> int:
    if not key.startswith("token_id:"):
        raise ValueError(key)
    return int(key.split(":", 1)[1])


class VLLMDialect(Dialect):
    name = "vllm"

    def __init__(self, top_logprobs: int = 20):
        super().__init__(top_logprobs)
        self.exact_ids: bool | None = None  # logprob_token_ids honoured by every server probed (None: not probed)

    def describe(self, endpoint: Endpoint, model_name: str | None) -> ServerInfo:
        entry = choose_model(endpoint, served_models(endpoint), model_name)
        fingerprint = {k: entry.get(k) for k in ("id", "root", "parent", "max_model_len")}
        self.info = ServerInfo(model=str(entry["id"]), fingerprint=fingerprint,
                               context_length=entry.get("max_model_len"),
                               tokenizer_hint=entry.get("root") or str(entry["id"]))
        return self.info

    def _request(self, endpoint: Endpoint, ids: Sequence[int], **fields: Any) -> dict[str, Any]:
        body = {"model": self.info.model if self.info else None, "prompt": list(ids), "max_tokens": 1,
                "temperature": 0.0, "return_tokens_as_token_ids": True, **fields}
        try:
            answer = endpoint.post("/v1/completions", body)
        except ServerRefused as err:
            raise refused(err, f"a scoring request of {len(ids)} tokens") from err
        prompt_tokens = (answer.get("usage") or {}).get("prompt_tokens")
        if prompt_tokens is not None and int(prompt_tokens) != len(ids):
            raise RlaifError(f"{endpoint.url} counted {prompt_tokens} prompt tokens for {len(ids)} token ids "
                             "(it changed the prompt); rlaif needs the ids taken as they are.")
        return answer

    def _first_position(self, endpoint: Endpoint, answer: dict[str, Any]) -> tuple[list[str], list[Any], dict[int, float]]:
        try:
            logprobs = answer["choices"][0]["logprobs"]
            top = {_token_id(k): float(v) for k, v in (logprobs["top_logprobs"][0] or {}).items()}
            return logprobs["tokens"], logprobs["token_logprobs"], top
        except (KeyError, IndexError, TypeError, ValueError):
            raise RlaifError(f"{endpoint.url}/v1/completions did not return log-probs keyed by token id "
                             f"(`return_tokens_as_token_ids`); {self.upgrade_hint()}") from None

    def top_k(self, endpoint: Endpoint, ids: Sequence[int], k: int) -> dict[int, float]:
        return self._first_position(endpoint, self._request(endpoint, ids, logprobs=k))[2]

    def by_ids(self, endpoint: Endpoint, ids: Sequence[int], wanted: Sequence[int]) -> dict[int, float]:
        out: dict[int, float] = {}
        for start in range(0, len(wanted), MAX_LOGPROB_TOKEN_IDS):
            chunk = list(wanted[start:start + MAX_LOGPROB_TOKEN_IDS])
            answer = self._request(endpoint, ids, logprobs=len(chunk), logprob_token_ids=chunk)
            out.update(self._first_position(endpoint, answer)[2])
        return out

    def allowed_only(self, endpoint: Endpoint, ids: Sequence[int], token: int) -> float:
        """log P(token | ids) from a request that may sample only `token` (raw log-probs ignore the mask)."""
        tokens, values, _ = self._first_position(endpoint, self._request(endpoint, ids, logprobs=0,
                                                                         allowed_token_ids=[token]))
        if not tokens or _token_id(tokens[0]) != token or values[0] is None:
            raise RlaifError(f"{endpoint.url} ignored `allowed_token_ids` (it sampled {tokens[:1]}); "
                             f"{self.upgrade_hint()}")
        return float(values[0])

    def next_token_logprobs(self, endpoint: Endpoint, ids: Sequence[int], wanted: Sequence[int]) -> dict[int, float]:
        if self.exact_ids:
            got = self.by_ids(endpoint, ids, wanted)
            if not all(t in got for t in wanted):
                raise self.missing(endpoint, ids, wanted, got, "logprob_token_ids")
            return {t: got[t] for t in wanted}
        top = self.top_k(endpoint, ids, self.top_logprobs)
        out = {t: top[t] for t in wanted if t in top}
        floor = min(top.values()) if top else 0.0
        for t in wanted:
            if t not in out:
                value = self.allowed_only(endpoint, ids, t)
                if value > floor + RAW_TOLERANCE and len(top) >= self.top_logprobs:
                    raise self._processed(endpoint, f"token {t} outside the top {len(top)} got {value:.4f} > {floor:.4f}")
                out[t] = value
        return out

    def probe(self, endpoint: Endpoint, ids: Sequence[int]) -> str:
        top = self.top_k(endpoint, ids, max(3, min(self.top_logprobs, 5)))
        ranked = sorted(top, key=top.get, reverse=True)
        if len(ranked) < 3:
            raise RlaifError(f"{endpoint.url} returned {len(ranked)} log-prob(s) for logprobs=5; {self.upgrade_hint()}")
        # ids the natural top k does not hold: an older vLLM that ignores `logprob_token_ids` cannot return them
        outside = [t for t in range(len(top) + 2) if t not in top][:2]
        asked = [ranked[1], *outside]
        try:
            got = self.by_ids(endpoint, ids, asked)
        except RlaifError:
            got = {}
        exact = all(t in got for t in asked)
        self.exact_ids = exact if self.exact_ids is None else self.exact_ids and exact
        if exact:
            self._check_raw(endpoint, ranked[1], top[ranked[1]], got[ranked[1]], "logprob_token_ids")
            return "vLLM logprob_token_ids"
        self._check_raw(endpoint, ranked[1], top[ranked[1]], self.allowed_only(endpoint, ids, ranked[1]),
                        "allowed_token_ids")
        return f"vLLM top {self.top_logprobs} log-probs, allowed_token_ids for the rest"

    def _check_raw(self, endpoint: Endpoint, token: int, expected: float, got: float, how: str) -> None:
        if not math.isclose(got, expected, abs_tol=RAW_TOLERANCE):
            raise self._processed(endpoint, f"token {token}: {got:.4f} by {how} vs {expected:.4f} in the top k")

    def _processed(self, endpoint: Endpoint, detail: str) -> RlaifError:
        return RlaifError(f"{endpoint.url} does not report raw log-probs ({detail}); start vLLM with "
                          "--logprobs-mode raw_logprobs (its default).")

    def complete(self, endpoint: Endpoint, ids: Sequence[int], settings: GenerationSettings, seed: int,
                 reuse_cache: bool = True) -> str:
        body = {"model": self.info.model if self.info else None, "prompt": list(ids),
                "max_tokens": settings.max_new_tokens, "temperature": settings.temperature, "top_p": settings.top_p,
                "seed": seed, "stop": list(settings.stop), "n": 1,
                # unset fields fall back to the model's generation_config (e.g. top_k 64): pin them off
                "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
                "frequency_penalty": 0.0}
        try:
            return str(endpoint.post("/v1/completions", body)["choices"][0]["text"])
        except ServerRefused as err:
            raise refused(err, f"a generation request of {len(ids)} tokens") from err
        except (KeyError, IndexError, TypeError):
            raise RlaifError(f"{endpoint.url}/v1/completions answered without choices[0].text.") from None

    def tokenize(self, endpoint: Endpoint, text: str, add_special_tokens: bool) -> list[int]:
        body = endpoint.post("/tokenize", {"model": self.info.model if self.info else None, "prompt": text,
                                           "add_special_tokens": add_special_tokens})
        return [int(t) for t in body["tokens"]]

    def detokenize(self, endpoint: Endpoint, ids: Sequence[int]) -> str:
        body = endpoint.post("/detokenize", {"model": self.info.model if self.info else None, "tokens": list(ids)})
        return str(body["prompt"])

    def render_chat(self, endpoint: Endpoint, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """vLLM renders chat templates in `/tokenize` (TokenizeChatRequest); the ids are decoded back to text."""
        try:
            body = endpoint.post("/tokenize", {"model": self.info.model if self.info else None, "messages": messages,
                                               "add_generation_prompt": add_generation_prompt,
                                               "add_special_tokens": False})
        except ServerRefused as err:
            raise refused(err, "to render the chat template") from err
        return self.detokenize(endpoint, body["tokens"])

    def upgrade_hint(self) -> str:
        return "Use a vLLM version whose /v1/completions takes return_tokens_as_token_ids."
