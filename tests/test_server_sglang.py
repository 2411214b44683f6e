"""The server back end against a fake SGLang replaying recorded response shapes.

Shapes: SGLang main (2026) from python/sglang/srt/managers/io_struct.py
(GenerateReqInput: input_ids, return_logprob, token_ids_logprob), the
tokenizer manager's meta_info (`output_token_ids_logprobs` entries
[logprob, token_id, text]), entrypoints/openai/protocol.py (ModelCard,
owned_by "sglang") and serving_tokenize.py. Fixtures: tests/data/server/sglang_*.json.
"""

from __future__ import annotations

import pytest

from rlaif.backends import GenerationSettings, TokenRequest, load_backend
from rlaif.backends.server.dialects import generation_seed
from rlaif.errors import RlaifError
from server_fakes import FakeSGLang, fake_servers


@pytest.fixture
def fakes(tiny_tokenizer, tokenizer_dir):
    with fake_servers(FakeSGLang, tiny_tokenizer, tokenizer_dir) as make:
        yield make


def test_detected_from_owned_by_and_scored_by_token_ids_logprob(fakes, tiny_tokenizer):
    fake = fakes()
    backend = load_backend(fake.server.url, ["backoff=0.01"])
    assert backend.dialect.name == "sglang" and backend.scoring == "SGLang /generate token_ids_logprob"
    assert backend.context_length == 4096 and backend.model_id.startswith("server:tiny-llama@")
    ids = tuple(tiny_tokenizer.encode("Consider the following conversation"))
    one, zero = tiny_tokenizer.convert_tokens_to_ids("1"), tiny_tokenizer.convert_tokens_to_ids("##0")
    end = len(ids) - 1
    fake.server.requests.clear()
    values = backend.token_logprobs([TokenRequest(ids + (one,), ((end, one), (end + 1, zero))),
                                     TokenRequest(ids, ((end, one),))])
    lp, lp1 = fake.model.logprobs(list(ids)), fake.model.logprobs([*ids, one])
    assert values == [[pytest.approx(lp[one], abs=1e-12), pytest.approx(lp1[zero], abs=1e-12)],
                      [pytest.approx(lp[one], abs=1e-12)]]
    bodies = sorted(fake.server.posts("/generate"), key=lambda body: len(body["input_ids"]))  # sent in parallel
    assert [b["input_ids"] for b in bodies] == [list(ids), [*ids, one]]
    assert bodies[0]["token_ids_logprob"] == [one] and bodies[0]["return_logprob"] is True
    assert bodies[0]["sampling_params"] == {"max_new_tokens": 1, "temperature": 0.0}


def test_sglang_without_token_ids_logprob_is_refused(fakes):
    with pytest.raises(RlaifError, match="token_ids_logprob") as err:
        load_backend(fakes(token_ids_logprob=False).server.url, ["backoff=0.01"])
    assert "\n" not in str(err.value)


def test_a_dropped_id_is_an_error(fakes, tiny_tokenizer):
    dropped = tiny_tokenizer.convert_tokens_to_ids("kind")
    backend = load_backend(fakes(drop=frozenset({dropped})).server.url, ["backoff=0.01"])
    ids = tuple(tiny_tokenizer.encode("hello"))
    with pytest.raises(RlaifError, match=rf"no log-prob for token id\(s\) \[{dropped}\]"):
        backend.token_logprobs([TokenRequest(ids, ((len(ids) - 1, dropped),))])


def test_generation_uses_native_sampling_params(fakes, tiny_tokenizer):
    fake = fakes()
    backend = load_backend(fake.server.url, ["backoff=0.01"])
    prompt = "hello what is good"
    fake.server.requests.clear()
    [text] = backend.generate([prompt], [GenerationSettings(max_new_tokens=4, temperature=0.5, seed=9)])
    ids = tiny_tokenizer.encode(prompt)
    assert text == tiny_tokenizer.decode(fake.model.greedy(ids, 4))
    [body] = fake.server.posts("/generate")
    assert body["input_ids"] == ids
    params = body["sampling_params"]
    assert (params["max_new_tokens"], params["temperature"], params["sampling_seed"]) == (4, 0.5, generation_seed(9, prompt))


def test_sglang_has_no_chat_rendering_without_a_local_tokenizer(fakes):
    backend = load_backend(fakes().server.url, ["tokenizer=server", "backoff=0.01"])
    assert backend.tokenizer.chat_template is None
    with pytest.raises(RlaifError, match="tokenizer=DIR_OR_HUB_ID"):
        backend.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
