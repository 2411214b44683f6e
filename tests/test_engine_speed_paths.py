"""The HF back end's fast paths give the plain path's log-probs: prefix tree, batching, per-row logits.

Requests are built like a labelling run (conversation, then principle, then two
orders of the options), longer than a tiny Gemma 3's sliding window of 4, so
a cache that dropped or misplaced tokens would change the numbers.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

from rlaif.backends import TokenRequest
from rlaif.backends.hf import HFBackend, default_threads, set_threads
from rlaif.backends.hf.prefix_tree import length_batches, prefix_tree
from rlaif.errors import RlaifError


def save_tiny_gemma3(path, tokenizer, sliding_window: int = 4):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig  # noqa: PLC0415

    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=8, sliding_window=sliding_window,
                              layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                              max_position_embeddings=512, query_pre_attn_scalar=8, initializer_range=0.5,
                              pad_token_id=0, eos_token_id=2, bos_token_id=None)
    torch.manual_seed(1)
    Gemma3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    return {"llama": tiny_model_dir, "gemma3": save_tiny_gemma3(tmp_path_factory.mktemp("tiny-gemma3"), tiny_tokenizer)}


@pytest.fixture(scope="module")
def backends(model_dirs):
    return {name: HFBackend.load(path) for name, path in model_dirs.items()}


def labelling_requests(vocab: int, pairs: int = 3, principles: int = 3, seed: int = 0) -> list[TokenRequest]:
    """2 orders x k principles per pair: a shared header, a conversation per pair, a principle, then the options."""
    rng = random.Random(seed)

    def words(n: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(n)]

    header, texts = words(6), [words(rng.randint(8, 12)) for _ in range(principles)]
    requests = []
    for _ in range(pairs):
        conversation, a, b = words(rng.randint(10, 30)), words(rng.randint(2, 9)), words(rng.randint(2, 9))
        for text in texts:
            for first, second in ((a, b), (b, a)):
                ids = tuple(header + conversation + text + [5] + first + [6] + second + [7])
                reads = ((len(ids) - 1, 4), (len(ids) - 1, 8), (len(ids) - 3, first[0]))
                requests.append(TokenRequest(ids, reads))
    requests.append(TokenRequest(tuple(words(7)), ((6, 4),)))  # shares nothing
    requests.append(requests[0])  # a duplicate
    return requests


def manual_logprobs(model, requests: list[TokenRequest]) -> list[list[float]]:
    """One unbatched, uncached forward per request: the ground truth."""
    out = []
    with torch.inference_mode():
        for r in requests:
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([r.ids])).logits[0].float(), dim=-1)
            out.append([logprobs[pos, tok].item() for pos, tok in r.reads])
    return out


@pytest.mark.parametrize("name", ["llama", "gemma3"])
@pytest.mark.parametrize("batch_tokens", [40, 100_000])
@pytest.mark.parametrize("row_keep", [True, False])
def test_shared_prefix_and_plain_paths_match_unbatched_passes(backends, name, batch_tokens, row_keep):
    backend = backends[name]
    requests = labelling_requests(len(backend.tokenizer))
    want = manual_logprobs(backend.model, requests)
    backend.batch_tokens = batch_tokens
    got = {}
    for share in (True, False):
        backend.share_prefix, backend._row_keep = share, row_keep
        backend.stats.__init__()
        got[share] = backend.token_logprobs(requests)
        assert [len(row) for row in got[share]] == [len(r.reads) for r in requests]
        for g, w in zip(got[share], want):
            assert g == pytest.approx(w, abs=1e-5)
        if share:
            tree_tokens = backend.stats.tokens
    plain_tokens = backend.stats.tokens
    assert plain_tokens == sum(len(r.ids) for r in requests[:-1])  # the duplicate runs once
    assert tree_tokens < 0.6 * plain_tokens  # the prefixes really were shared


def test_the_sliding_window_is_live_in_the_gemma_model(model_dirs, backends):
    """The same weights with a window wider than the prompts give other log-probs, so the test above can fail."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    wide = AutoModelForCausalLM.from_pretrained(model_dirs["gemma3"], sliding_window=4096)
    requests = labelling_requests(len(backends["gemma3"].tokenizer))[:4]
    narrow, broad = manual_logprobs(backends["gemma3"].model, requests), manual_logprobs(wide, requests)
    assert max(abs(a - b) for x, y in zip(narrow, broad) for a, b in zip(x, y)) > 1e-3


def test_prefix_tree_shares_the_conversation_then_the_principle():
    conv, p1, p2 = tuple(range(10, 30)), tuple(range(40, 50)), tuple(range(60, 72))
    seqs = sorted({conv + p + order for p in (p1, p2) for order in ((1, 2, 3), (2, 1, 3))})
    levels = prefix_tree(seqs, [len(s) - 1 for s in seqs], min_saving=8)
    assert [(n.start, n.end, n.leaf) for n in levels[0]] == [(0, 20, False)]
    assert sorted((n.start, n.end, n.leaf) for n in levels[1]) == [(20, 30, False), (20, 32, False)]
    assert sorted((n.start, n.end, n.leaf) for n in levels[2]) == [(30, 33, True)] * 2 + [(32, 35, True)] * 2
    assert all(n.parent.parent is levels[0][0] for n in levels[2])
    # A span too short for a level of its own stays inside its children.
    small = prefix_tree(seqs, [len(s) - 1 for s in seqs], min_saving=8, min_span=11)
    assert sorted((n.start, n.end) for n in small[1]) == [(20, 32), (20, 33), (20, 33)]
    assert [(n.start, n.end) for n in small[2]] == [(32, 35)] * 2
    # So does one that saves too little: (2 - 1) x 10 and x 12 < 16.
    assert [len(level) for level in prefix_tree(seqs, [len(s) - 1 for s in seqs], min_saving=16)] == [1, 4]


def test_prefix_tree_stops_sharing_at_the_first_read():
    seqs = [(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11), (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12)]
    levels = prefix_tree(seqs, [4, 10], min_saving=1, min_span=1)
    assert [(n.start, n.end) for n in levels[0]] == [(0, 4)]
    assert sorted((n.start, n.end) for n in levels[1]) == [(4, 11), (4, 11)]


def test_length_batches_trade_padding_against_passes():
    # One batch: 5 + 4 x 10 = 45 padded tokens; [1, 1, 1] + [10]: (5 + 3) + (5 + 10) = 23.
    assert length_batches([1, 1, 1, 10], budget=100, overhead=5) == [(0, 3), (3, 4)]
    # With a dear pass, one batch (5 + 40 = 45 < 2 x 50 + 13).
    assert length_batches([1, 1, 1, 10], budget=100, overhead=50) == [(0, 4)]
    # The budget caps rows x longest; an over-long row runs alone.
    assert length_batches([10, 10, 10, 10], budget=20, overhead=1000) == [(0, 2), (2, 4)]
    assert length_batches([50], budget=20, overhead=0) == [(0, 1)]


def test_threads_follow_the_environment(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("RLAIF_THREADS", "1")
    set_threads(None)
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("RLAIF_THREADS", "all")
    with pytest.raises(RlaifError, match="RLAIF_THREADS must be a whole number"):
        set_threads(None)
    torch.set_num_threads(before)
    assert 1 <= default_threads() <= (os.cpu_count() or 1)


def test_a_model_whose_cache_drops_tokens_falls_back_to_the_plain_path(model_dirs, monkeypatch, caplog):
    """A cache built from the config keeps only the last window - 1 tokens of sliding layers: no sharing then."""
    import transformers  # noqa: PLC0415

    backend = HFBackend.load(model_dirs["gemma3"])
    requests = labelling_requests(len(backend.tokenizer))
    real = transformers.DynamicCache
    monkeypatch.setattr(transformers, "DynamicCache", lambda **kw: real(config=backend.model.config, **kw))
    got = backend.token_logprobs(requests)
    assert backend.share_prefix is False
    assert "without prefix sharing" in caplog.text
    for g, w in zip(got, manual_logprobs(backend.model, requests)):
        assert g == pytest.approx(w, abs=1e-5)
