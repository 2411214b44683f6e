"""The server back end against a fake vLLM replaying recorded response shapes.

Shapes: vLLM main after PR #43463 (merged 2026-07-13), from its pydantic models in
vllm/entrypoints/openai/completion/protocol.py (CompletionRequest with
`logprob_token_ids`, CompletionResponse, CompletionLogProbs), models/protocol.py
(ModelCard) and the tokenize protocol; the "older vLLM" fake ignores
`logprob_token_ids` as releases before that PR do (OpenAIBaseModel extra="allow").
Fixtures: tests/data/server/vllm_*.json. Expected numbers come from the fake's
model (tests/server_fakes.FakeModel), computed here independently of the client.
"""

from __future__ import annotations

import math

import pytest

from rlaif.backends import GenerationSettings, TokenRequest, load_backend
from rlaif.backends.server.dialects import generation_seed
from rlaif.backends.server.tokenizer import ServerTokenizer
from rlaif.errors import RlaifError
from server_fakes import FakeModel, FakeVLLM, fake_servers
from conftest import make_tokenizer


@pytest.fixture
def fakes(tiny_tokenizer, tokenizer_dir):
    with fake_servers(FakeVLLM, tiny_tokenizer, tokenizer_dir) as make:
        yield make


def load(fake: FakeVLLM, *options: str, tokenizer: str = "auto"):
    return load_backend(fake.server.url, [f"tokenizer={tokenizer}", "backoff=0.01", *options])


def ranked(model: FakeModel, ids: list[int]) -> list[int]:
    lp = model.logprobs(ids)
    return sorted(range(len(lp)), key=lp.__getitem__, reverse=True)


def test_logprob_token_ids_one_request_per_distinct_prefix(fakes, tiny_tokenizer):
    fake = fakes()
    backend = load(fake)
    assert backend.scoring == "vLLM logprob_token_ids"
    ids = tuple(tiny_tokenizer.encode("Consider the following conversation between a human and an assistant"))
    a, b, one, zero = (tiny_tokenizer.convert_tokens_to_ids(t) for t in ("A", "B", "1", "##0"))
    end = len(ids) - 1
    requests = [TokenRequest(ids, ((end, a), (end, b))),  # the same prefix twice: merged
                TokenRequest(ids + (one,), ((end, one), (end + 1, zero)))]  # "10": a second prefix
    fake.server.requests.clear()
    values = backend.token_logprobs(requests)
    lp, lp1 = fake.model.logprobs(list(ids)), fake.model.logprobs([*ids, one])
    assert values == [[pytest.approx(lp[a], abs=1e-12), pytest.approx(lp[b], abs=1e-12)],
                      [pytest.approx(lp[one], abs=1e-12), pytest.approx(lp1[zero], abs=1e-12)]]
    bodies = sorted(fake.server.posts("/v1/completions"), key=lambda body: len(body["prompt"]))  # sent in parallel
    assert [body["prompt"] for body in bodies] == [list(ids), [*ids, one]]  # token ids, nothing added
    first = bodies[0]
    assert first["logprob_token_ids"] == sorted({a, b, one}) and first["logprobs"] == 3
    assert first["max_tokens"] == 1 and first["return_tokens_as_token_ids"] is True and first["model"] == "tiny-llama"
    assert "allowed_token_ids" not in first and bodies[1]["logprob_token_ids"] == [zero]


def test_older_vllm_reads_the_top_k_and_asks_allowed_token_ids_for_the_rest(fakes, tiny_tokenizer):
    fake = fakes(logprob_token_ids=False)
    backend = load(fake, "top_logprobs=5")
    assert backend.scoring.startswith("vLLM top 5 log-probs")
    ids = tiny_tokenizer.encode("hello what is good")
    order = ranked(fake.model, ids)
    inside, outside = order[2], order[40]
    fake.server.requests.clear()
    values = backend.token_logprobs([TokenRequest(tuple(ids), ((len(ids) - 1, inside), (len(ids) - 1, outside)))])
    lp = fake.model.logprobs(ids)
    assert values == [[pytest.approx(lp[inside], abs=1e-12), pytest.approx(lp[outside], abs=1e-12)]]
    bodies = fake.server.posts("/v1/completions")
    assert [b.get("logprobs") for b in bodies] == [5, 0]
    assert "allowed_token_ids" not in bodies[0] and bodies[1]["allowed_token_ids"] == [outside]


def test_processed_logprobs_server_is_refused_at_load(fakes):
    fake = fakes(logprob_token_ids=False, processed=True)
    with pytest.raises(RlaifError, match="--logprobs-mode raw_logprobs") as err:
        load(fake)
    assert "\n" not in str(err.value)


def test_server_ignoring_allowed_token_ids_is_refused_at_load(fakes):
    fake = fakes(logprob_token_ids=False, honour_allowed=False)
    with pytest.raises(RlaifError, match="ignored `allowed_token_ids`"):
        load(fake)


def test_an_id_missing_from_the_answer_is_an_error_not_a_guess(fakes, tiny_tokenizer):
    dropped = tiny_tokenizer.convert_tokens_to_ids("honest")
    fake = fakes(drop=frozenset({dropped}))
    backend = load(fake)
    ids = tuple(tiny_tokenizer.encode("hello"))
    keep = tiny_tokenizer.convert_tokens_to_ids("yes")
    with pytest.raises(RlaifError, match=rf"no log-prob for token id\(s\) \[{dropped}\]") as err:
        backend.token_logprobs([TokenRequest(ids, ((len(ids) - 1, keep), (len(ids) - 1, dropped)))])
    assert "never approximates" in str(err.value) and "\n" not in str(err.value)


def test_429_and_5xx_are_retried_with_backoff(fakes, tiny_tokenizer):
    fake = fakes()
    backend = load(fake, "retries=3")
    ids = tuple(tiny_tokenizer.encode("hello bye"))
    fake.server.requests.clear()
    fake.server.fail = [429, 503, 500]
    token = tiny_tokenizer.convert_tokens_to_ids("ok")
    values = backend.token_logprobs([TokenRequest(ids, ((len(ids) - 1, token),))])
    assert values == [[pytest.approx(fake.model.logprobs(list(ids))[token], abs=1e-12)]]
    assert len(fake.server.posts("/v1/completions")) == 4  # three refusals, then the answer


def test_a_server_that_keeps_failing_gives_the_one_line_resume_error(fakes, tiny_tokenizer):
    fake = fakes()
    backend = load(fake, "retries=2")
    fake.server.fail = [503] * 10
    ids = tuple(tiny_tokenizer.encode("hello"))
    with pytest.raises(RlaifError) as err:
        backend.token_logprobs([TokenRequest(ids, ((len(ids) - 1, 5),))])
    message = str(err.value)
    assert message.startswith(f"server at {fake.server.url[:-3]} stopped answering after 3 tries: HTTP 503")
    assert message.endswith("restart it and rerun with --resume.") and "\n" not in message


def test_a_bad_request_is_not_retried_and_says_what_the_server_said(fakes, tiny_tokenizer):
    fake = fakes(logprob_token_ids=False)
    backend = load(fake, "top_logprobs=50")  # above the fake's --max-logprobs 20
    fake.server.requests.clear()
    ids = tuple(tiny_tokenizer.encode("hello"))
    with pytest.raises(RlaifError, match="HTTP 400: Requested sample logprobs of 50, which is greater than max allowed: 20"):
        backend.token_logprobs([TokenRequest(ids, ((len(ids) - 1, 5),))])
    assert len(fake.server.posts("/v1/completions")) == 1


def test_model_id_names_the_served_model_and_ignores_timestamps(fakes, tiny_tokenizer, tmp_path):
    first, later = load(fakes(created=1)), load(fakes(created=2))
    assert first.model_id == later.model_id and first.model_id.startswith("server:tiny-llama@")
    assert len(first.model_id.split("@")[1]) == 12 and first.context_length == 4096
    tiny_tokenizer.save_pretrained(tmp_path)
    other = FakeVLLM(tiny_tokenizer, str(tmp_path))  # other weights (root), same name
    try:
        assert load(other).model_id != first.model_id
    finally:
        other.server.close()


def test_generation_sends_ids_and_settings_and_cuts_at_stop(fakes, tiny_tokenizer):
    fake = fakes()
    backend = load(fake)
    prompt = "hello what is good"
    ids = tiny_tokenizer.encode(prompt)
    words = tiny_tokenizer.decode(fake.model.greedy(ids, 6)).split()
    stop = f" {words[3]}"
    settings = GenerationSettings(max_new_tokens=6, temperature=0.7, top_p=0.9, seed=3, stop=(stop,))
    fake.server.requests.clear()
    [text] = backend.generate([prompt], [settings])
    full = tiny_tokenizer.decode(fake.model.greedy(ids, 6))
    assert text == full[:full.index(stop)] and stop not in text  # the server left the stop in; the client cut it
    [body] = fake.server.posts("/v1/completions")
    assert body["prompt"] == ids and body["max_tokens"] == 6 and body["stop"] == [stop]
    assert (body["temperature"], body["top_p"], body["seed"]) == (0.7, 0.9, generation_seed(3, prompt))
    assert body["top_k"] == -1 and body["repetition_penalty"] == 1.0  # no server-side defaults sneak in


def test_a_local_tokenizer_that_differs_from_the_server_is_refused(fakes, tmp_path):
    other = make_tokenizer(["hello", "world", "A", "B", "1", "##0"])
    other.save_pretrained(tmp_path)
    with pytest.raises(RlaifError, match="does not tokenize like the server") as err:
        load(fakes(), tokenizer=str(tmp_path))
    assert "tokenizer=server" in str(err.value) and "\n" not in str(err.value)


def test_the_server_tokenizer_follows_the_protocol(fakes, tiny_tokenizer):
    backend = load(fakes(), tokenizer="server")
    tok = backend.tokenizer
    assert isinstance(tok, ServerTokenizer) and tok.unk_token_id is None and tok.bos_token is None
    text = "Consider the following conversation"
    assert tok.encode(text, add_special_tokens=False) == tiny_tokenizer.encode(text, add_special_tokens=False)
    assert tok.decode(tiny_tokenizer.encode(text)) == tiny_tokenizer.decode(tiny_tokenizer.encode(text))
    rendered = tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True)
    assert rendered == tiny_tokenizer.decode(tiny_tokenizer.encode("user: hello\nassistant:", add_special_tokens=False))


def test_auto_tokenizer_is_the_local_one_the_server_names(fakes):
    backend = load(fakes())  # /v1/models root is the tokenizer's directory
    assert not isinstance(backend.tokenizer, ServerTokenizer)


def test_api_key_comes_from_the_environment(fakes, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    fake = fakes()
    load(fake)
    assert set(fake.server.authorizations) == {"Bearer sk-test-123"}


def test_exact_values_stay_exact_in_the_option_engine(fakes, tiny_tokenizer):
    """Through rlaif's scoring engine: normalised option probabilities from the server's raw log-probs."""
    from rlaif.options import ScoringEngine  # noqa: PLC0415

    fake = fakes()
    engine = ScoringEngine(load(fake))
    prompt = "Options : ( A ) yes ( B ) no The answer is ("
    [result] = engine.score([prompt], {"A": ["A"], "B": ["B"]})
    lp = fake.model.logprobs(tiny_tokenizer.encode(prompt))
    pa, pb = math.exp(lp[tiny_tokenizer.convert_tokens_to_ids("A")]), math.exp(lp[tiny_tokenizer.convert_tokens_to_ids("B")])
    assert result.probs["A"] == pytest.approx(pa / (pa + pb), abs=1e-12)
    assert result.mass == pytest.approx(pa + pb, abs=1e-12)


def test_reproducible_generation_goes_one_at_a_time_through_the_server_tokenizer(fakes, tiny_tokenizer):
    fake = fakes()
    backend = load(fake, "reproducible=true", tokenizer="server")
    prompts = ["hello what is good", "bye what is bad", "yes no ok", "two plus four"]
    fake.server.requests.clear()
    fake.server.delay = 0.05
    start = len(fake.server.arrivals)
    texts = backend.generate(prompts, [GenerationSettings(max_new_tokens=3)] * len(prompts))
    assert texts == [tiny_tokenizer.decode(fake.model.greedy(tiny_tokenizer.encode(p), 3)) for p in prompts]
    bodies = fake.server.posts("/v1/completions")
    assert [b["prompt"] for b in bodies] == [tiny_tokenizer.encode(p) for p in prompts]  # in order: a chain
    arrived = [t for (method, path, _), t in zip(fake.server.requests, fake.server.arrivals[start:])
               if path == "/v1/completions"]
    assert all(b - a >= 0.045 for a, b in zip(arrived, arrived[1:]))  # each after the previous answer


def test_generation_runs_side_by_side_by_default(fakes):
    fake = fakes()
    backend = load(fake)
    fake.server.requests.clear()
    fake.server.delay = 0.2
    start = len(fake.server.arrivals)
    backend.generate(["hello", "bye", "yes", "no"], [GenerationSettings(max_new_tokens=2)] * 4)
    arrived = fake.server.arrivals[start:]
    assert len(arrived) == 4 and max(arrived) - min(arrived) < 0.15  # all four in flight at once
