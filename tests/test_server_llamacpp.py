"""The server back end against a real llama-server (llama.cpp from llama-cpp-python 0.3.36) on the embedded
Gemma 3 270M Q4_K_M GGUF, compared with the in-process transformers back end on the same weights dequantised.

Tolerance, measured (benchmarks/server_throughput.py prompts, 24 hh-rlhf label prompts and 4 d-RLAIF prompts):
llama-server computes with the quantised weights and 8-bit-quantised activations
(ggml's CPU dot products), transformers with float32 dequantised weights, so the
two differ by numerics, not by method: max |delta log P(option)| 0.26, max
|delta q| 0.062 (q = P(A) / (P(A) + P(B))), already on 3-token prompts (0.20).
The bounds below are those plus a margin; a read at the wrong position, a second
BOS or a top-k guess is off by far more (typically > 1 nat).

The llama-server binary: $RLAIF_LLAMA_SERVER or scripts/build-llama-server.sh's cache (else skipped).
The HF conversion goes to $RLAIF_TEST_MODEL_CACHE when set (else about a minute per session).
"""

from __future__ import annotations

import math

import json
import os
from pathlib import Path

import pytest

from llama_server import LlamaServer, llama_binary, llama_gguf, llama_server  # noqa: F401 (fixtures)
from rlaif.backends import GenerationSettings, TokenRequest, load_backend
from rlaif.backends.server.tokenizer import ServerTokenizer
from rlaif.errors import RlaifError
from rlaif.options import ScoringEngine, spell

pytestmark = pytest.mark.slow

TOL_LOGPROB = 0.4  # |log P_server(option) - log P_hf(option)|, measured max 0.26
TOL_Q = 0.1  # |q_server - q_hf|, measured max 0.062
SERVER_NOISE = 0.2  # the same log-prob from llama-server in two batch shapes, measured up to 0.106
# the first 300 pairs of the hh-rlhf harmless-base dev split (MIT), shipped with the examples
HH = Path(__file__).resolve().parents[1] / "examples" / "data" / "hh_rlhf_harmless.jsonl"


@pytest.fixture(scope="module", autouse=True)
def model_cache():
    """Keep the default model's conversion where RLAIF_TEST_MODEL_CACHE says (if set)."""
    keep, saved = os.environ.get("RLAIF_TEST_MODEL_CACHE"), os.environ.get("RLAIF_CACHE_DIR")
    if keep:
        os.environ["RLAIF_CACHE_DIR"] = keep
    yield
    if keep and saved is not None:
        os.environ["RLAIF_CACHE_DIR"] = saved


@pytest.fixture(scope="module")
def server_backend(llama_server):
    return load_backend(llama_server.url, ["backoff=0.1"])


@pytest.fixture(scope="module")
def hf_backend():
    from rlaif.backends.hf import HFBackend  # noqa: PLC0415

    return HFBackend.load("default")


def pairs(n: int) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in HH.read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    return [{"id": r["id"], "prompt": r["prompt"], "response_a": r["chosen"], "response_b": r["rejected"]}
            for r in rows]


def label_prompts(backend, n_pairs: int, k: int) -> tuple[list[str], dict[str, list[str]]]:
    from rlaif.constitution import choose_principles  # noqa: PLC0415
    from rlaif.label import LabelConfig, Labeller  # noqa: PLC0415

    labeller = Labeller(LabelConfig(model="unused", principles="k", k=k, no_cache=True), backend=backend)
    prompts = [labeller._render(pair, principle, swapped)
               for pair in pairs(n_pairs)
               for principle in choose_principles(labeller.constitution, "k", pair["id"], 0, k, [])
               for swapped in (False, True)]
    return prompts, labeller.template.option_spellings()


def test_served_model_identity_and_tokenizer(server_backend, llama_server):
    assert server_backend.model_id.startswith("server:gemma-3-270m-q4_k_m@")
    assert server_backend.context_length == 8192 and server_backend.dialect.name == "llamacpp"
    assert not isinstance(server_backend.tokenizer, ServerTokenizer)  # auto: the embedded default's, checked
    remote = load_backend(llama_server.url, ["tokenizer=server"]).tokenizer
    assert (remote.bos_token, remote.eos_token) == ("<bos>", "<eos>") and remote.bos_token_id == 2
    text = "Human: naïve café 漢字 10 + 2\n\nAssistant: (A"
    assert remote.encode(text) == server_backend.tokenizer.encode(text)
    assert remote.decode(remote.encode(text, add_special_tokens=False)) == text


def test_label_option_probabilities_match_transformers(server_backend, hf_backend):
    prompts, spellings = label_prompts(server_backend, n_pairs=3, k=2)
    served = ScoringEngine(server_backend).score(prompts, spellings)
    local = ScoringEngine(hf_backend).score(prompts, spellings)
    for s, h in zip(served, local):
        assert abs(s.probs["A"] - h.probs["A"]) <= TOL_Q
        for option in ("A", "B"):
            assert abs(s.logprobs[option] - h.logprobs[option]) <= TOL_LOGPROB
        if abs(h.probs["A"] - 0.5) > 0.15:
            assert (s.probs["A"] > 0.5) == (h.probs["A"] > 0.5)


def test_drlaif_ten_is_read_exactly_through_its_tokens(server_backend, hf_backend):
    from rlaif.templates import load_template  # noqa: PLC0415

    template = load_template("drlaif-score")
    spellings = template.option_spellings()
    prompts = [template.render(conversation=p["prompt"], response=p["response_a"],
                               principle="Choose the response that is more honest and harmless.") for p in pairs(2)]
    served = ScoringEngine(server_backend).score(prompts, spellings)
    local = ScoringEngine(hf_backend).score(prompts, spellings)
    tok = server_backend.tokenizer
    tens = [spell(tok, text) for text in spellings["10"]]
    assert all(len(ten) >= 2 for ten in tens)  # "10" is spelt with several tokens: read as a product along the trie
    for prompt, s, h in zip(prompts, served, local):
        assert abs(s.logprobs["10"] - h.logprobs["10"]) <= TOL_LOGPROB
        assert abs(s.probs["10"] - h.probs["10"]) <= TOL_Q
        ids = tuple(tok.encode(prompt))
        paths = []  # each spelling of "10", token by token, one request per step
        for ten in tens:
            steps = [server_backend.token_logprobs([TokenRequest(ids + tuple(ten[:j]), ((len(ids) + j - 1, ten[j]),))])[0][0]
                     for j in range(len(ten))]
            paths.append(math.exp(sum(steps)))
        # The option sums its spellings. llama.cpp's CPU numbers for a position depend on the batch it is computed
        # in (measured: the last token of a 166-token prompt computed in one batch vs re-evaluated alone from the
        # prompt cache differ by 0.06 nats), and these steps run as separate requests after the engine's: measured
        # differences up to 0.106 over three tokens, hence the bound.
        assert s.logprobs["10"] == pytest.approx(math.log(sum(paths)), abs=SERVER_NOISE)


def test_generation_is_seeded_and_reproducible(llama_server, server_backend):
    """With reproducible=true a seeded sample is the same text whatever ran before or beside it (llama-server's
    numbers depend on its batch and on a reused cache, so by default only the seed is promised)."""
    backend = load_backend(llama_server.url, ["reproducible=true"])
    prompts = ["Human: Tell me a short story about a cat.\n\nAssistant:", "Human: What is rain?\n\nAssistant:"]
    sampled = GenerationSettings(max_new_tokens=16, temperature=0.9, top_p=0.95, seed=11)
    first = backend.generate(prompts, [sampled, sampled])
    server_backend.generate(prompts[::-1], [sampled, sampled])  # other traffic: cache and slots change
    again = backend.generate(prompts[::-1], [sampled, sampled])[::-1]
    assert first == again and all(first)
    other = backend.generate(prompts, [GenerationSettings(16, 0.9, 0.95, seed=12)] * 2)
    assert other != first
    [cut] = server_backend.generate(prompts[:1], [GenerationSettings(max_new_tokens=48, stop=(".", "\n"))])
    assert cut and "." not in cut and "\n" not in cut


def test_a_different_local_tokenizer_is_refused(llama_server, tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(RlaifError, match="does not tokenize like the server") as err:
        load_backend(llama_server.url, [f"tokenizer={tmp_path}"])
    assert "\n" not in str(err.value)


def test_a_killed_server_gives_the_one_line_resume_error(llama_binary, llama_gguf, tmp_path):
    server = LlamaServer(llama_binary, llama_gguf, tmp_path / "server.log", ctx=2048).start()
    try:
        backend = load_backend(server.url, ["retries=2", "backoff=0.05", "tokenizer=server"])
        ids = tuple(backend.tokenizer.encode("Hello"))
        assert backend.token_logprobs([TokenRequest(ids, ((len(ids) - 1, 2),))])[0][0] < 0
        server.kill()
        with pytest.raises(RlaifError) as err:
            backend.token_logprobs([TokenRequest(ids, ((len(ids) - 1, 3),))])
    finally:
        server.stop()
    message = str(err.value)
    assert message == (f"server at http://127.0.0.1:{server.port} stopped answering after 3 tries: cannot connect "
                       "(ConnectionError); restart it and rerun with --resume.")
