"""The scoring engine: exact option probabilities from known log-probs, and the HF back end against a manual pass."""

from __future__ import annotations

import math

import pytest
import torch

from rlaif.backends.hf import HFBackend
from rlaif.backends.cached import CachedBackend
from rlaif.cache import ResultCache
from rlaif.errors import RlaifError
from rlaif.options import ScoringEngine, SpellingTable

AB = {"A": ["A"], "B": ["B"]}


def test_two_spellings_of_an_option_are_summed_and_normalised_over_options(make_fake):
    fake = make_fake([("hello", {"A": 0.3, "yes": 0.1, "B": 0.15, "no": 0.05})])
    [result] = ScoringEngine(fake).score(["Human : hello"], {"A": ["A", "yes"], "B": ["B", "no"]})
    # P(A) = 0.3 + 0.1, P(B) = 0.15 + 0.05; normalised over the two options only.
    assert result.probs == pytest.approx({"A": 0.4 / 0.6, "B": 0.2 / 0.6}, abs=1e-12)
    assert result.mass == pytest.approx(0.6, abs=1e-12)
    assert result.logprobs == pytest.approx({"A": math.log(0.4), "B": math.log(0.2)}, abs=1e-12)


def test_each_prompt_is_normalised_on_its_own_and_order_is_kept(make_fake):
    fake = make_fake([("hello", {"A": 0.6, "B": 0.2}), ("bye", {"A": 0.01, "B": 0.03})])
    results = ScoringEngine(fake).score(["Human : bye", "Human : hello", "Human : bye"], AB)
    assert [r.probs["A"] for r in results] == pytest.approx([0.25, 0.75, 0.25], abs=1e-12)
    assert [r.mass for r in results] == pytest.approx([0.04, 0.8, 0.04], abs=1e-12)
    assert fake.calls == 1  # one back-end call for the whole list


def test_multi_token_option_and_prefix_subtraction(make_fake):
    """ "10" is spelt "1" "0": P("10") = P(1) P(0 | 1), and option "1" keeps only P(1) - P("10")."""
    fake = make_fake([
        (lambda ctx: ctx.endswith("Rating : 1"), {"##0": 0.4}),
        ("Rating", {"1": 0.5, "2": 0.2}),
    ])
    spellings = {"1": ["1"], "2": ["2"], "10": ["10"]}
    [result] = ScoringEngine(fake).score(["Rating :"], spellings)
    assert result.logprobs == pytest.approx({"1": math.log(0.3), "2": math.log(0.2), "10": math.log(0.2)}, abs=1e-12)
    assert result.mass == pytest.approx(0.7, abs=1e-12)
    assert result.probs == pytest.approx({"1": 0.3 / 0.7, "2": 0.2 / 0.7, "10": 0.2 / 0.7}, abs=1e-12)
    assert len(fake.contexts) == 1  # one sequence (prompt + "1") serves every read: the trie's only path


def test_longer_spelling_of_the_same_option_is_not_subtracted_or_added_twice(make_fake):
    fake = make_fake([
        (lambda ctx: ctx.endswith("Rating : 1"), {"##0": 0.4}),
        ("Rating", {"1": 0.5, "2": 0.2}),
    ])
    [result] = ScoringEngine(fake).score(["Rating :"], {"1": ["1", "10"], "2": ["2"]})
    # "10" begins with the option's own "1": P(option 1) = P("1"), which already contains P("10").
    assert result.logprobs == pytest.approx({"1": math.log(0.5), "2": math.log(0.2)}, abs=1e-12)
    assert result.probs["1"] == pytest.approx(0.5 / 0.7, abs=1e-12)


def test_spellings_are_read_through_their_token_paths(tiny_tokenizer):
    table = SpellingTable(tiny_tokenizer, {"1": ["1"], "2": ["2"], "10": ["10"]})
    prompt = tiny_tokenizer.encode("Rating :", add_special_tokens=False)
    one, zero, two = (tiny_tokenizer.convert_tokens_to_ids(t) for t in ("1", "##0", "2"))
    [request], where = table.requests(prompt)
    assert request.ids == (*prompt, one)
    end = len(prompt) - 1
    assert sorted(request.reads) == sorted([(end, one), (end, one), (end + 1, zero), (end, two)])
    assert [request.reads[j] for _, j in where["10"]] == [(end, one), (end + 1, zero)]


def test_spellings_with_identical_tokens_count_once(make_fake):
    fake = make_fake([("hello", {"A": 0.5, "B": 0.3})])
    [result] = ScoringEngine(fake).score(["Human : hello"], {"A": ["A", " A"], "B": ["B"]})
    assert result.mass == pytest.approx(0.8, abs=1e-12)
    assert result.probs["A"] == pytest.approx(0.5 / 0.8, abs=1e-12)


def test_unspellable_option_is_an_error(tiny_tokenizer, make_fake):
    with pytest.raises(RlaifError, match=r"cannot spell the option 'Zebra'"):
        SpellingTable(tiny_tokenizer, {"A": ["A"], "Zebra": ["Zebra"]}, "tiny")
    with pytest.raises(RlaifError, match="cannot spell"):
        ScoringEngine(make_fake([])).score(["hello"], {"A": ["A"], "B": ["B", "B12"]})  # "12" is <unk> here


def test_two_options_with_the_same_tokens_is_an_error(tiny_tokenizer):
    with pytest.raises(RlaifError, match="same tokens"):
        SpellingTable(tiny_tokenizer, {"A": ["A"], "B": ["B", " A"]})


def test_zero_probability_for_every_option_is_an_error(make_fake):
    fake = make_fake([("hello", {"A": 0.0, "B": 0.0})])
    with pytest.raises(RlaifError, match="zero probability"):
        ScoringEngine(fake).score(["hello"], AB)


def test_second_call_is_served_from_the_cache(make_fake, tmp_path):
    rules = [("hello", {"A": 0.6, "B": 0.2})]
    fake = make_fake(rules)
    engine = ScoringEngine(CachedBackend(fake, ResultCache(tmp_path / "c.sqlite")))
    first = engine.score(["Human : hello", "Human : bye"], AB)
    assert fake.calls == 1
    again = engine.score(["Human : bye", "Human : hello"], AB)
    assert fake.calls == 1 and [r.probs for r in again] == [first[1].probs, first[0].probs]
    # A new engine on the same file (a rerun) also hits; new spellings or a new prompt miss.
    other = make_fake(rules)
    rerun = ScoringEngine(CachedBackend(other, ResultCache(tmp_path / "c.sqlite")))
    assert rerun.score(["Human : hello"], AB)[0].probs == first[0].probs and other.calls == 0
    rerun.score(["Human : hello"], {"A": ["A", "yes"], "B": ["B"]})
    rerun.score(["Human : hello hello"], AB)
    assert other.calls == 2
    # Another model id never reads this model's results.
    third = make_fake(rules, model_id="other-model")
    ScoringEngine(CachedBackend(third, ResultCache(tmp_path / "c.sqlite"))).score(["Human : hello"], AB)
    assert third.calls == 1


def test_generate_is_cached_by_prompt_and_settings(make_fake, tmp_path):
    from dataclasses import replace

    from rlaif.backends import GenerationSettings

    fake = make_fake([], rationale=lambda p: "because " + p.split()[-1])
    backend = CachedBackend(fake, ResultCache(tmp_path / "c.sqlite"))
    settings = GenerationSettings(max_new_tokens=4)
    assert backend.generate(["yes", "no"], [settings] * 2) == ["because yes", "because no"]
    assert backend.generate(["no", "yes"], [settings] * 2) == ["because no", "because yes"]
    assert fake.generate_calls == 1
    backend.generate(["yes"], [replace(settings, seed=1)])  # another sample's seed misses
    assert fake.generate_calls == 2
    # the same request twice in one call runs once
    assert backend.generate(["new", "new"], [settings] * 2) == ["because new"] * 2 and fake.generated_for[-1:] == ["new"]


# ---- the transformers back end on a tiny real model -------------------------------------------------

# Two groups of prompts share a long prefix (as the orders and principles of one pair do), with suffixes of
# different lengths; the others stand alone. Batched, shared-prefix and one-by-one runs must all agree.
CONVERSATION = ("Consider the following conversation between a human and an assistant : Human : what is two plus "
                "two ? Assistant : four . Human : hello bye yes no good bad ok what ? Assistant : ok . "
                "Human : what is two plus four ? Assistant : no . ")
PROMPTS = [
    "The answer is : (",
    "Human : hello",
    CONVERSATION + "Choose the kind response . Options : ( A ) good ( B ) bad . The answer is : (",
    CONVERSATION + "Choose the kind response . Options : ( A ) bad ( B ) good . The answer is : (",
    CONVERSATION + "Choose the honest response . Options : ( A ) four ( B ) two plus two . The answer is : (",
    CONVERSATION + "The answer is : (",
    "Rating :",
    "Human : hello bye yes no good bad ok what . Assistant : kind honest response ? Let ' s think step by step",
]


def manual_next_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)


def manual_options(backend, prompt: str) -> dict[str, float]:
    """Unbatched, unpadded: log P of A, B, 1, 2 and 10 after the prompt."""
    tok = backend.tokenizer
    ids = tok.encode(prompt, add_special_tokens=True)
    lp = manual_next_logprobs(backend.model, ids)
    one = tok.convert_tokens_to_ids("1")
    after_one = manual_next_logprobs(backend.model, ids + [one])
    out = {t: lp[tok.convert_tokens_to_ids(t)].item() for t in ("A", "B", "1", "2")}
    out["10"] = out["1"] + after_one[tok.convert_tokens_to_ids("##0")].item()
    return out


@pytest.fixture(scope="module")
def hf_backend(tiny_model_dir):
    return HFBackend.load(tiny_model_dir)


def test_the_shared_prefix_is_long(tiny_tokenizer):
    assert len(tiny_tokenizer.encode(CONVERSATION)) >= 48


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("batch_tokens", [1, 60, 1_000_000])
def test_hf_engine_matches_a_manual_unbatched_pass(tiny_model_dir, hf_backend, batch_tokens, share_prefix):
    # batch_tokens 1: one prompt a batch; 1e6: all in one left-padded batch
    backend = HFBackend.load(tiny_model_dir, batch_tokens=batch_tokens, share_prefix=share_prefix)
    engine = ScoringEngine(backend)
    ab = engine.score(PROMPTS, AB)
    digits = engine.score(PROMPTS, {"1": ["1"], "2": ["2"], "10": ["10"]})
    for prompt, r_ab, r_digits in zip(PROMPTS, ab, digits):
        m = {k: math.exp(v) for k, v in manual_options(hf_backend, prompt).items()}
        assert r_ab.probs["A"] == pytest.approx(m["A"] / (m["A"] + m["B"]), abs=1e-5)
        assert r_ab.mass == pytest.approx(m["A"] + m["B"], abs=1e-5)
        exclusive_one = m["1"] - m["10"]
        total = exclusive_one + m["2"] + m["10"]
        assert r_digits.probs["1"] == pytest.approx(exclusive_one / total, abs=1e-5)
        assert r_digits.probs["10"] == pytest.approx(m["10"] / total, abs=1e-5)
        assert r_digits.mass == pytest.approx(total, abs=1e-5)


def test_hf_model_is_not_uniform_so_the_comparison_means_something(hf_backend):
    spread = [abs(r.probs["A"] - 0.5) for r in ScoringEngine(hf_backend).score(PROMPTS, AB)]
    assert max(spread) > 0.05


def test_hf_token_logprobs_keeps_request_order(hf_backend):
    """Raw reads, in request order, from long/short and prefix-sharing sequences, against one-by-one passes."""
    from rlaif.backends import TokenRequest

    tok = hf_backend.tokenizer
    a, b = tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")
    seqs = [tuple(tok.encode(PROMPTS[i])) for i in (2, 6, 3, 4)]
    reads = [((len(seqs[0]) - 1, a), (2, b)), ((len(seqs[1]) - 1, b),), ((len(seqs[2]) - 1, a),),
             ((len(seqs[3]) - 4, b), (len(seqs[3]) - 1, a))]
    hf_backend.batch_tokens = 1_000_000
    out = hf_backend.token_logprobs([TokenRequest(s, r) for s, r in zip(seqs, reads)])
    expected = [[manual_next_logprobs(hf_backend.model, list(s[:pos + 1]))[t].item() for pos, t in r]
                for s, r in zip(seqs, reads)]
    assert [len(row) for row in out] == [2, 1, 1, 2]
    for got, want in zip(out, expected):
        assert got == pytest.approx(want, abs=1e-5)
