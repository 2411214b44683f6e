"""Fake vLLM, SGLang and llama.cpp servers for the server back end's tests: http.server on 127.0.0.1, in a thread.

Answers are the recorded response shapes in tests/data/server/*.json (built from
the servers' own pydantic protocol models; each file names its source), filled
with the log-probs of a `FakeModel`: a deterministic softmax over the tiny test
tokenizer's vocabulary, so a test can compute every expected number itself.
Every request body is recorded; `fail` queues HTTP statuses to answer first.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data" / "server"


def fixture(name: str) -> dict[str, Any]:
    body = json.loads((DATA / name).read_text(encoding="utf-8"))
    body.pop("_source", None)
    return body


class FakeModel:
    """log P(t | ids): a softmax over `vocab` ids of logits seeded by the last three ids."""

    def __init__(self, vocab: int, scale: float = 3.0):
        self.vocab, self.scale = vocab, scale

    def logprobs(self, ids: list[int]) -> list[float]:
        rng = random.Random(repr(tuple(ids[-3:])))
        logits = [rng.gauss(0.0, self.scale) for _ in range(self.vocab)]
        top = max(logits)
        norm = top + math.log(sum(math.exp(x - top) for x in logits))
        return [x - norm for x in logits]

    def greedy(self, ids: list[int], n: int) -> list[int]:
        out: list[int] = []
        for _ in range(n):
            lp = self.logprobs(ids + out)
            out.append(max(range(self.vocab), key=lp.__getitem__))
        return out


class FakeServer:
    """A threaded HTTP server on a free port; `route(method, path, body) -> (status, json)` answers."""

    def __init__(self, route: Callable[[str, str, Any], tuple[int, Any]]):
        self.route = route
        self.requests: list[tuple[str, str, Any]] = []
        self.authorizations: list[str | None] = []
        self.arrivals: list[float] = []  # time.monotonic() of each request
        self.delay = 0.0  # seconds to wait before each normal answer
        self.fail: list[int] = []  # statuses to answer (in order) before answering normally
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                with fake.lock:
                    fake.requests.append((method, self.path, body))
                    fake.authorizations.append(self.headers.get("Authorization"))
                    fake.arrivals.append(time.monotonic())
                    status = fake.fail.pop(0) if fake.fail else None
                if status is None:
                    time.sleep(fake.delay)
                    status, payload = fake.route(method, self.path, body)
                else:
                    payload = {"error": {"message": f"injected {status}", "type": "Injected", "param": None,
                                         "code": status}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._answer("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._answer("POST")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def posts(self, path: str) -> list[Any]:
        return [body for method, p, body in self.requests if method == "POST" and p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def not_found(path: str) -> tuple[int, Any]:
    return 404, {"detail": f"Not Found: {path}"}


class FakeVLLM:
    """vLLM's endpoints. `logprob_token_ids`: honour that field (main) or ignore it (older releases);
    `processed`: report log-probs after the allowed-token mask (--logprobs-mode processed_logprobs);
    `honour_allowed`: apply allowed_token_ids; `drop`: ids the server leaves out of its answers."""

    def __init__(self, tokenizer, root: str, logprob_token_ids: bool = True, processed: bool = False,
                 honour_allowed: bool = True, drop: frozenset[int] = frozenset(), max_logprobs: int = 20,
                 created: int = 1780000000):
        self.tokenizer, self.root = tokenizer, root
        self.model = FakeModel(len(tokenizer))
        self.logprob_token_ids, self.processed, self.honour_allowed = logprob_token_ids, processed, honour_allowed
        self.drop, self.max_logprobs, self.created = drop, max_logprobs, created
        self.server = FakeServer(self.route)

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if (method, path) == ("GET", "/v1/models"):
            models = fixture("vllm_models.json")
            card = models["data"][0]
            card.update(id="tiny-llama", root=self.root, created=self.created)
            card["permission"][0]["created"] = self.created
            return 200, models
        if (method, path) == ("GET", "/version"):
            return 200, {"version": "0.0.0-fake"}
        if (method, path) == ("POST", "/tokenize"):
            return 200, self.tokenize(body)
        if (method, path) == ("POST", "/detokenize"):
            return 200, {**fixture("vllm_tokenize.json")["detokenize"], "prompt": self.tokenizer.decode(body["tokens"])}
        if (method, path) == ("POST", "/v1/completions"):
            return self.complete(body)
        return not_found(path)

    def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        if "messages" in body:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in body["messages"])
            text += "assistant:" if body.get("add_generation_prompt", True) else ""
            tokens = self.tokenizer.encode(text, add_special_tokens=False)
        else:
            tokens = self.tokenizer.encode(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))
        return {**fixture("vllm_tokenize.json")["tokenize"], "count": len(tokens), "tokens": tokens}

    def complete(self, body: dict[str, Any]) -> tuple[int, Any]:
        ids = list(body["prompt"])
        k = body.get("logprobs")
        if k is not None and k > self.max_logprobs and not (self.logprob_token_ids and body.get("logprob_token_ids")):
            error = fixture("vllm_error.json")
            error["error"]["message"] = f"Requested sample logprobs of {k}, which is greater than max allowed: {self.max_logprobs}"
            return 400, error
        if body.get("max_tokens", 16) > 1:
            return 200, self.generation(body, ids)
        lp = self.model.logprobs(ids)
        allowed = body.get("allowed_token_ids") if self.honour_allowed else None
        candidates = allowed or range(len(lp))
        sampled = max(candidates, key=lp.__getitem__)
        reported = [0.0 if (allowed and self.processed and t in allowed) else lp[t] for t in range(len(lp))]
        ranked = sorted(range(len(lp)), key=lp.__getitem__, reverse=True)
        if self.logprob_token_ids and body.get("logprob_token_ids"):
            shown = [sampled, *body["logprob_token_ids"]]
        else:
            shown = [sampled, *ranked[:k or 0]]
        top = {f"token_id:{t}": max(reported[t], -9999.0) for t in dict.fromkeys(shown) if t not in self.drop}
        answer = fixture("vllm_completion.json")
        choice = answer["choices"][0]
        choice["text"] = self.tokenizer.decode([sampled])
        choice["logprobs"] = {"text_offset": [0], "token_logprobs": [max(reported[sampled], -9999.0)],
                              "tokens": [f"token_id:{sampled}"], "top_logprobs": [top]} if k is not None else None
        answer["usage"].update(prompt_tokens=len(ids), total_tokens=len(ids) + 1, completion_tokens=1)
        return 200, answer

    def generation(self, body: dict[str, Any], ids: list[int]) -> dict[str, Any]:
        out = self.model.greedy(ids, body["max_tokens"])
        text = self.tokenizer.decode(out)
        for stop in body.get("stop") or []:  # keep the stop string in, as include_stop_str_in_output does
            if stop in text:
                text = text[:text.index(stop) + len(stop)]
        answer = fixture("vllm_completion.json")
        answer["choices"][0].update(text=text, logprobs=None, finish_reason="stop")
        answer["usage"].update(prompt_tokens=len(ids), total_tokens=len(ids) + len(out), completion_tokens=len(out))
        return answer


class FakeSGLang:
    """SGLang's endpoints; `token_ids_logprob`: honour that /generate field; `drop`: ids left out."""

    def __init__(self, tokenizer, root: str, token_ids_logprob: bool = True, drop: frozenset[int] = frozenset()):
        self.tokenizer, self.root = tokenizer, root
        self.model = FakeModel(len(tokenizer))
        self.token_ids_logprob, self.drop = token_ids_logprob, drop
        self.server = FakeServer(self.route)

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        recorded = fixture("sglang_models.json")
        if (method, path) == ("GET", "/v1/models"):
            recorded["models"]["data"][0]["root"] = self.root
            return 200, recorded["models"]
        if (method, path) == ("GET", "/get_model_info"):
            return 200, {**recorded["model_info"], "model_path": self.root, "tokenizer_path": self.root}
        if (method, path) == ("POST", "/v1/tokenize"):
            tokens = self.tokenizer.encode(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))
            return 200, {**fixture("sglang_tokenize.json")["tokenize"], "tokens": tokens, "count": len(tokens)}
        if (method, path) == ("POST", "/v1/detokenize"):
            return 200, {"text": self.tokenizer.decode(body["tokens"])}
        if (method, path) == ("POST", "/generate"):
            return 200, self.generate(body)
        return not_found(path)

    def generate(self, body: dict[str, Any]) -> dict[str, Any]:
        ids = list(body["input_ids"])
        params = body.get("sampling_params") or {}
        out = self.model.greedy(ids, params.get("max_new_tokens", 128))
        answer = copy.deepcopy(fixture("sglang_generate.json"))
        meta = answer["meta_info"]
        meta.update(prompt_tokens=len(ids), completion_tokens=len(out))
        answer.update(text=self.tokenizer.decode(out), output_ids=out)
        lp = self.model.logprobs(ids)
        meta["output_token_logprobs"] = [[lp[out[0]], out[0], None]]
        wanted = body.get("token_ids_logprob") if self.token_ids_logprob else None
        if wanted:
            meta["output_token_ids_logprobs"] = [[[lp[t], t, None] for t in wanted if t not in self.drop]]
        else:
            meta.pop("output_token_ids_logprobs")
        return answer


class FakeLlamaCpp:
    """llama-server's native endpoints (shapes recorded from llama-server 0.3.36). `max_n_probs`: a cap on
    the list (real servers list up to the vocabulary); `extra_bos`: evaluate one token more than sent."""

    def __init__(self, tokenizer, max_n_probs: int | None = None, extra_bos: bool = False):
        self.tokenizer = tokenizer
        self.model = FakeModel(len(tokenizer))
        self.max_n_probs, self.extra_bos = max_n_probs, extra_bos
        self.server = FakeServer(self.route)

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if (method, path) == ("GET", "/v1/models"):
            models = fixture("llamacpp_models.json")
            models["data"][0]["meta"]["n_vocab"] = self.model.vocab
            return 200, models
        if (method, path) == ("GET", "/props"):
            return 200, {**fixture("llamacpp_props.json"), "bos_token": "", "eos_token": "<eos>"}
        if (method, path) == ("POST", "/tokenize"):
            return 200, {"tokens": self.tokenizer.encode(body["content"], add_special_tokens=body.get("add_special", False))}
        if (method, path) == ("POST", "/detokenize"):
            return 200, {"content": self.tokenizer.decode(body["tokens"])}
        if (method, path) == ("POST", "/completion"):
            return 200, self.complete(body)
        return not_found(path)

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        ids = list(body["prompt"])
        lp = self.model.logprobs(ids)
        ranked = sorted(range(len(lp)), key=lp.__getitem__, reverse=True)
        k = min(body.get("n_probs", 0), self.max_n_probs or len(lp))
        answer = fixture("llamacpp_completion.json")
        entry = answer["completion_probabilities"][0]
        entry.update(id=ranked[0], token=self.tokenizer.decode([ranked[0]]), logprob=lp[ranked[0]])
        entry["top_logprobs"] = [{"id": t, "token": self.tokenizer.decode([t]), "bytes": [], "logprob": lp[t]}
                                 for t in ranked[:k]]
        answer["tokens_evaluated"] = len(ids) + int(self.extra_bos)
        return answer


@contextlib.contextmanager
def fake_servers(kind: type, *args: Any) -> Iterator[Callable[..., Any]]:
    """`make(**kwargs)` starts a `kind(*args, **kwargs)` fake; every one made is closed at the end."""
    made: list[Any] = []

    def make(**kwargs: Any) -> Any:
        made.append(kind(*args, **kwargs))
        return made[-1]

    try:
        yield make
    finally:
        for fake in made:
            fake.server.close()
