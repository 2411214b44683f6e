"""The llama.cpp dialect against a fake llama-server replaying shapes recorded from llama-server 0.3.36
(tests/data/server/llamacpp_*.json): an id outside the top k widens k until it is listed, never a guess."""

from __future__ import annotations

import pytest

from rlaif.backends import TokenRequest, load_backend
from rlaif.errors import RlaifError
from server_fakes import FakeLlamaCpp, fake_servers


@pytest.fixture
def fakes(tiny_tokenizer):
    with fake_servers(FakeLlamaCpp, tiny_tokenizer) as make:
        yield make


def test_an_id_outside_the_top_k_widens_k_to_an_exact_answer(fakes, tiny_tokenizer):
    fake = fakes()
    backend = load_backend(fake.server.url, ["tokenizer=server", "top_logprobs=5", "backoff=0.01"])
    assert backend.dialect.name == "llamacpp" and backend.context_length == 4096
    assert backend.model_id.startswith("server:gemma-3-270m-q4_k_m@") and backend.pool.endpoints[0].concurrency == 4
    ids = tiny_tokenizer.encode("hello what is good")
    lp = fake.model.logprobs(ids)
    ranked = sorted(range(len(lp)), key=lp.__getitem__, reverse=True)
    far = ranked[40]  # outside the top 5
    fake.server.requests.clear()
    [[value]] = backend.token_logprobs([TokenRequest(tuple(ids), ((len(ids) - 1, far),))])
    assert value == pytest.approx(lp[far], abs=1e-12)
    bodies = fake.server.posts("/completion")
    assert [b["n_probs"] for b in bodies] == [5, len(lp)]  # 5 x 32, capped at the vocabulary (64 ids here)
    assert all(b["prompt"] == ids and b["n_predict"] == 1 and b["post_sampling_probs"] is False
               and b["cache_prompt"] is True for b in bodies)


def test_a_server_that_caps_the_list_cannot_be_trusted_for_the_rest(fakes, tiny_tokenizer):
    fake = fakes(max_n_probs=10)
    backend = load_backend(fake.server.url, ["tokenizer=server", "top_logprobs=5", "backoff=0.01"])
    ids = tiny_tokenizer.encode("hello")
    lp = fake.model.logprobs(ids)
    far = sorted(range(len(lp)), key=lp.__getitem__, reverse=True)[40]
    with pytest.raises(RlaifError, match=rf"no log-prob for token id\(s\) \[{far}\].*n_probs={len(lp)}"):
        backend.token_logprobs([TokenRequest(tuple(ids), ((len(ids) - 1, far),))])


def test_a_server_that_changes_the_prompt_is_refused(fakes):
    with pytest.raises(RlaifError, match="it changed the prompt"):
        load_backend(fakes(extra_bos=True).server.url, ["tokenizer=server", "backoff=0.01"])


def test_the_server_tokenizer_reads_bos_and_eos_from_props(fakes, tiny_tokenizer):
    backend = load_backend(fakes().server.url, ["tokenizer=server", "backoff=0.01"])
    tok = backend.tokenizer
    assert tok.eos_token == "<eos>" and tok.eos_token_id == tiny_tokenizer.convert_tokens_to_ids("<eos>")
    assert tok.bos_token is None and tok.bos_token_id is None  # this tokenizer adds none
