"""SGLang (request and response shapes from python/sglang/srt/managers/io_struct.py GenerateReqInput and
tokenizer_manager.py on SGLang main, 2026; tokenize endpoints from entrypoints/openai/serving_tokenize.py).

Scoring uses the native `/generate` endpoint: `input_ids` (taken as they are),
`max_new_tokens: 1`, `return_logprob: true` and `token_ids_logprob: [ids]`;
`meta_info.output_token_ids_logprobs[0]` then holds `[logprob, token_id, text]`
for exactly those ids at the position after the prompt. With `temperature: 0`
SGLang samples greedily (SamplingParams turns it into temperature 1, top_k 1) and
its sampler reports `log_softmax(logits)` before any top-k cut: the model's
full-softmax log-probs. A server that does not return every asked id is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlaif.backends import GenerationSettings
from rlaif.backends.server.client import Endpoint, ServerDown, ServerRefused
from rlaif.backends.server.dialects import Dialect, ServerInfo, as_logprob, choose_model, refused, served_models
from rlaif.errors import RlaifError


class SGLangDialect(Dialect):
    name = "sglang"

    def describe(self, endpoint: Endpoint, model_name: str | None) -> ServerInfo:
        entry = choose_model(endpoint, served_models(endpoint), model_name)
        try:
            info = endpoint.get("/get_model_info", retries=0)
        except (ServerRefused, ServerDown):
            info = {}
        fingerprint = {"id": entry.get("id"), "root": entry.get("root"), "max_model_len": entry.get("max_model_len"),
                       **{k: info.get(k) for k in ("model_path", "tokenizer_path", "weight_version") if k in info}}
        self.info = ServerInfo(model=str(entry["id"]), fingerprint=fingerprint,
                               context_length=entry.get("max_model_len"),
                               tokenizer_hint=info.get("tokenizer_path") or entry.get("root") or str(entry["id"]))
        return self.info

    def _generate(self, endpoint: Endpoint, body: dict[str, Any], doing: str) -> dict[str, Any]:
        try:
            answer = endpoint.post("/generate", body)
        except ServerRefused as err:
            raise refused(err, doing) from err
        return answer[0] if isinstance(answer, list) and answer else answer

    def next_token_logprobs(self, endpoint: Endpoint, ids: Sequence[int], wanted: Sequence[int]) -> dict[int, float]:
        body = {"input_ids": list(ids), "sampling_params": {"max_new_tokens": 1, "temperature": 0.0},
                "return_logprob": True, "top_logprobs_num": 0, "token_ids_logprob": sorted(set(wanted))}
        answer = self._generate(endpoint, body, f"a scoring request of {len(ids)} tokens")
        meta = answer.get("meta_info") if isinstance(answer, dict) else None
        got: dict[int, float] = {}
        try:
            for value, token, *_ in (meta or {}).get("output_token_ids_logprobs", [[]])[0] or []:
                got[int(token)] = as_logprob(value)
        except (IndexError, TypeError, ValueError):
            raise RlaifError(f"{endpoint.url}/generate returned output_token_ids_logprobs in an unknown shape; "
                             f"{self.upgrade_hint()}") from None
        prompt_tokens = (meta or {}).get("prompt_tokens")
        if prompt_tokens is not None and int(prompt_tokens) != len(ids):
            raise RlaifError(f"{endpoint.url} counted {prompt_tokens} prompt tokens for {len(ids)} token ids "
                             "(it changed the prompt); rlaif needs the ids taken as they are.")
        if not all(t in got for t in wanted):
            raise self.missing(endpoint, ids, wanted, got, "token_ids_logprob")
        return {t: got[t] for t in wanted}

    def probe(self, endpoint: Endpoint, ids: Sequence[int]) -> str:
        self.next_token_logprobs(endpoint, ids, [0, 1, 2])
        return "SGLang /generate token_ids_logprob"

    def complete(self, endpoint: Endpoint, ids: Sequence[int], settings: GenerationSettings, seed: int,
                 reuse_cache: bool = True) -> str:
        params = {"max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                  "top_p": settings.top_p, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0,
                  "stop": list(settings.stop), "sampling_seed": seed}
        answer = self._generate(endpoint, {"input_ids": list(ids), "sampling_params": params},
                                f"a generation request of {len(ids)} tokens")
        if not isinstance(answer, dict) or "text" not in answer:
            raise RlaifError(f"{endpoint.url}/generate answered without `text`.")
        return str(answer["text"])

    def tokenize(self, endpoint: Endpoint, text: str, add_special_tokens: bool) -> list[int]:
        body = endpoint.post("/v1/tokenize", {"model": self.info.model if self.info else None, "prompt": text,
                                              "add_special_tokens": add_special_tokens})
        return [int(t) for t in body["tokens"]]

    def detokenize(self, endpoint: Endpoint, ids: Sequence[int]) -> str:
        body = endpoint.post("/v1/detokenize", {"model": self.info.model if self.info else None, "tokens": list(ids),
                                                "skip_special_tokens": False})
        return str(body["text"])

    def upgrade_hint(self) -> str:
        return "Use an SGLang version whose /generate takes token_ids_logprob."
