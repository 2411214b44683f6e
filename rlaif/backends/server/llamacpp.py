"""llama.cpp's llama-server (checked against the source vendored in llama-cpp-python 0.3.36, tools/server).

Scoring uses the native `/completion` endpoint with the prompt as token ids
(`tokenize_input_prompts`: an array of numbers is taken as is, no BOS added),
`n_predict: 1` and `n_probs: k`. With `post_sampling_probs` false (the default,
sent explicitly) `populate_token_probs` takes `get_token_probabilities`: a
softmax over the raw logits of the whole vocabulary, before temperature or any
sampler, so the log-probs are the model's own; entries carry the token `id`.
When a wanted id is not in the top k, the request is repeated with a larger k
(x32 each time, up to the vocabulary size, where every id is listed), so the
answer stays exact. `cache_prompt: true` reuses a slot's cached prefix;
`response_fields` trims the answer to what is read.

A model with sliding-window attention (Gemma 3) keeps only the window in its
cache unless llama-server runs with `--swa-full`; without it every request
recomputes its whole prompt (correct, but slow).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlaif.backends import GenerationSettings
from rlaif.backends.server.client import Endpoint, ServerRefused
from rlaif.backends.server.dialects import (
    Dialect,
    ServerInfo,
    as_logprob,
    choose_model,
    refused,
    served_models,
)
from rlaif.errors import RlaifError

GROWTH = 32  # how much k grows when a wanted id is outside the top k


class LlamaCppDialect(Dialect):
    name = "llamacpp"
    shares_prefix_cache = False

    def describe(self, endpoint: Endpoint, model_name: str | None) -> ServerInfo:
        entry = choose_model(endpoint, served_models(endpoint), model_name)
        props = endpoint.get("/props")
        meta = entry.get("meta") or {}
        keep = ("vocab_type", "n_vocab", "n_ctx_train", "n_embd", "n_params", "size", "ftype")
        fingerprint = {"model_path": props.get("model_path", entry["id"]), **{k: meta.get(k) for k in keep}}
        settings = props.get("default_generation_settings") or {}
        self.info = ServerInfo(
            model=str(entry["id"]), fingerprint=fingerprint,
            context_length=settings.get("n_ctx") or meta.get("n_ctx"), vocab_size=meta.get("n_vocab"),
            tokenizer_hint=props.get("model_path"), bos_token=props.get("bos_token") or None,
            eos_token=props.get("eos_token") or None, chat_template=props.get("chat_template") or None,
            extra={"build": props.get("build_info"), "slots": props.get("total_slots")},
        )
        return self.info

    def _score_body(self, ids: Sequence[int], k: int) -> dict[str, Any]:
        return {"prompt": list(ids), "n_predict": 1, "n_probs": k, "post_sampling_probs": False,
                "temperature": 0.0, "cache_prompt": True,
                "response_fields": ["completion_probabilities", "tokens_evaluated", "timings/prompt_n"]}

    def _top(self, endpoint: Endpoint, ids: Sequence[int], k: int) -> dict[int, float]:
        try:
            body = endpoint.post("/completion", self._score_body(ids, k))
        except ServerRefused as err:
            raise refused(err, f"a scoring request of {len(ids)} tokens") from err
        try:
            first = body["completion_probabilities"][0]
            top = {int(e["id"]): as_logprob(e["logprob"]) for e in first["top_logprobs"]}
        except (KeyError, IndexError, TypeError, ValueError):
            raise RlaifError(f"{endpoint.url}/completion did not return token ids with log-probs (`n_probs`); "
                             f"{self.upgrade_hint()}") from None
        self.count_computed(body.get("timings/prompt_n"))  # what the prompt cache did not cover
        evaluated = body.get("tokens_evaluated")
        if evaluated is not None and int(evaluated) != len(ids):
            raise RlaifError(f"{endpoint.url} evaluated {evaluated} tokens for a prompt of {len(ids)} token ids "
                             "(it changed the prompt); rlaif needs the ids taken as they are.")
        return top

    def next_token_logprobs(self, endpoint: Endpoint, ids: Sequence[int], wanted: Sequence[int]) -> dict[int, float]:
        vocab = (self.info.vocab_size if self.info else None) or 1 << 20
        k = min(self.top_logprobs, vocab)
        while True:
            top = self._top(endpoint, ids, k)
            if all(t in top for t in wanted):
                return {t: top[t] for t in wanted}
            if k >= vocab or len(top) < k:  # every id was listed, or the server capped the list
                raise self.missing(endpoint, ids, wanted, top, f"n_probs={k}")
            k = min(vocab, k * GROWTH)

    def probe(self, endpoint: Endpoint, ids: Sequence[int]) -> str:
        top = self._top(endpoint, ids, 2)
        if len(top) < 2:
            raise RlaifError(f"{endpoint.url}/completion returned {len(top)} log-prob(s) for n_probs=2; "
                             f"{self.upgrade_hint()}")
        return f"llama-server /completion n_probs (top {self.top_logprobs}, widened up to the vocabulary)"

    def complete(self, endpoint: Endpoint, ids: Sequence[int], settings: GenerationSettings, seed: int,
                 reuse_cache: bool = True) -> str:
        """A continuation. A reused cached prefix, like batching with other requests, changes the numbers a
        little (so a seeded sample may differ); `reuse_cache=False` recomputes the prompt."""
        body = {
            "prompt": list(ids), "n_predict": settings.max_new_tokens, "temperature": settings.temperature,
            "top_p": settings.top_p, "seed": seed, "stop": list(settings.stop), "cache_prompt": reuse_cache,
            # llama-server's other samplers are on by default (top_k 40, min_p 0.05, ...): off, so the
            # text is drawn from the temperature / top-p distribution the settings name and nothing else.
            "top_k": 0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0, "presence_penalty": 0.0,
            "frequency_penalty": 0.0, "dry_multiplier": 0.0, "xtc_probability": 0.0, "mirostat": 0,
            "response_fields": ["content"],
        }
        try:
            return str(endpoint.post("/completion", body)["content"])
        except ServerRefused as err:
            raise refused(err, f"a generation request of {len(ids)} tokens") from err
        except (KeyError, TypeError):
            raise RlaifError(f"{endpoint.url}/completion answered without `content`.") from None

    def tokenize(self, endpoint: Endpoint, text: str, add_special_tokens: bool) -> list[int]:
        body = endpoint.post("/tokenize", {"content": text, "add_special": add_special_tokens, "parse_special": True})
        return [int(t) for t in body["tokens"]]

    def detokenize(self, endpoint: Endpoint, ids: Sequence[int]) -> str:
        return str(endpoint.post("/detokenize", {"tokens": list(ids)})["content"])

    def render_chat(self, endpoint: Endpoint, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        try:
            body = endpoint.post("/apply-template", {"messages": messages, "add_generation_prompt": add_generation_prompt})
        except ServerRefused as err:
            raise refused(err, "to render the chat template") from err
        return str(body["prompt"])

    def upgrade_hint(self) -> str:
        return "Use a llama-server build whose /completion reports `n_probs` with token ids (2025 or later)."
