"""Batched decoding on a tiny Llama: a row's text does not depend on its batch (sampling, early stops, eos),
it is what transformers' `generate` gave the same row, a stop string ends the row's compute, the Gumbel-max
and top-p shortcuts equal the full computations, batches follow the token budget, and `rlaif generate`
sends a chunk's prompts x samples in one back-end call."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import replace

import pytest
import torch

from rlaif.backends import GenerationSettings, load_backend
from rlaif.backends.hf.generation import (
    DecodeStats,
    Row,
    cut_at_stop,
    first_argmax,
    gumbel_candidates,
    nucleus,
    plan_batches,
    stop_token_ids,
    uniforms,
)
from rlaif.generate import GenerateConfig, generate_pairs
from rlaif.text import response_stops

PROMPTS = ["Human: hello Assistant:", "Human: what is two plus four ? Assistant:", "A B",
           "Consider the following conversation between a human and an assistant : hello ?"]
SAMPLE = GenerationSettings(max_new_tokens=14, temperature=1.0, seed=7)


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return load_backend(tiny_model_dir)


@pytest.fixture
def model_calls(backend):
    """Rows of every model call (prefill and decode steps) while the test runs."""
    rows: list[int] = []
    hook = backend.model.register_forward_pre_hook(lambda _m, _a, kw: rows.append(kw["input_ids"].shape[0]),
                                                   with_kwargs=True)
    yield rows
    hook.remove()


def rows_and_settings() -> tuple[list[str], list[GenerationSettings]]:
    """Each prompt x 3 sample seeds, plus a greedy row and a shorter row: one call of mixed settings."""
    prompts = [p for p in PROMPTS for _ in range(3)] + [PROMPTS[1], PROMPTS[2]]
    settings = [replace(SAMPLE, seed=SAMPLE.seed * 1000003 + i) for _ in PROMPTS for i in range(3)]
    settings += [GenerationSettings(max_new_tokens=14), replace(SAMPLE, max_new_tokens=5)]
    return prompts, settings


def frequent_mid_word(texts: list[str]) -> str:
    """A word the model writes after its first word in some texts but not all: a stop that ends rows early."""
    counts = Counter(w for t in texts for w in set(t.split()[1:]) if len(w) > 1)
    for word, seen in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if seen < len(texts):
            return word
    raise AssertionError("the tiny model repeats itself everywhere; pick another seed")


def test_text_does_not_depend_on_batch_including_early_stops(backend):
    prompts, settings = rows_and_settings()
    free = backend.generate(prompts, settings)
    stop = frequent_mid_word(free)
    stopped = [replace(s, stop=(stop,)) for s in settings]
    early = [k for k, text in enumerate(free) if stop in text and text.split()[-1] != stop]
    assert early and len(early) < len(prompts)  # some rows end early, the rest run to max_new_tokens
    together = backend.generate(prompts, stopped)
    alone = [backend.generate([p], [s])[0] for p, s in zip(prompts, stopped)]
    reversed_order = backend.generate(prompts[::-1], stopped[::-1])[::-1]
    backend.batch_tokens = 40  # two or three rows a batch
    try:
        small_batches = backend.generate(prompts, stopped)
    finally:
        backend.batch_tokens = 8192
    assert together == alone == reversed_order == small_batches
    assert together == [cut_at_stop(text, (stop,)) for text in free]
    assert len(set(together[:3])) > 1  # the samples of a prompt differ: each row has its own seed


def reference_generate(model, tokenizer, prompts: list[str], settings: GenerationSettings) -> list[str]:
    """The transformers path this loop replaced: `generate` with the per-row seeded Gumbel-max processor."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper  # noqa: PLC0415

    tokenizer.padding_side = "left"
    enc = tokenizer.pad({"input_ids": [tokenizer(p)["input_ids"] for p in prompts]}, padding=True, return_tensors="pt")
    processors = LogitsProcessorList()
    if settings.temperature > 0:
        rows = [torch.Generator().manual_seed(int(hashlib.sha256(f"{settings.seed}:{p}".encode()).hexdigest()[:15], 16))
                for p in prompts]
        warpers = [TemperatureLogitsWarper(settings.temperature)]
        warpers += [TopPLogitsWarper(settings.top_p)] if settings.top_p < 1 else []

        def gumbel_max(input_ids, scores):
            for warper in warpers:
                scores = warper(input_ids, scores)
            u = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in rows])
            return scores - torch.log(-torch.log(u.clamp_min(1e-20)))

        processors.append(gumbel_max)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=settings.max_new_tokens, do_sample=False, temperature=None,
                             top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id, logits_processor=processors)
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("settings", [SAMPLE, replace(SAMPLE, temperature=0.7, top_p=0.8, seed=3),
                                      GenerationSettings(max_new_tokens=14)], ids=["sample", "top-p", "greedy"])
def test_same_texts_as_transformers_generate_with_eos_rows(backend, settings):
    free = backend.generate(PROMPTS, settings)
    word = frequent_mid_word(free)  # make a word the model writes the end of sequence, so rows end at eos
    eos_id = backend.tokenizer.convert_tokens_to_ids(word)
    config = backend.model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = [saved, eos_id]
    try:
        ours = backend.generate(PROMPTS, settings)
        theirs = reference_generate(backend.model, backend.tokenizer, PROMPTS, settings)
    finally:
        config.eos_token_id = saved
    assert ours == theirs
    # some rows ended at it (kept in the text: it is no special token), where they ran on before
    assert any(cut != text and text.startswith(cut) and cut.endswith(word) for text, cut in zip(free, ours))


def test_stop_string_ends_the_rows_compute(backend, model_calls):
    prompt = PROMPTS[1]
    for seed in range(40):  # a row that runs all 30 tokens (no eos): prefill + 29 decode steps
        settings = replace(SAMPLE, max_new_tokens=30, seed=seed)
        model_calls.clear()
        [free] = backend.generate([prompt], [settings])
        if len(model_calls) == 30:
            break
    ids = backend.tokenizer(free, add_special_tokens=False)["input_ids"]
    assert len(model_calls) == 30 and backend.tokenizer.decode(ids) == free
    words = free.split()
    stop = next(w for w in words[3:] if len(w) > 1 and w not in words[:3])
    tokens = next(t for t in range(1, len(ids) + 1) if stop in backend.tokenizer.decode(ids[:t]))
    model_calls.clear()
    before = backend.decode_stats.row_steps
    [text] = backend.generate([prompt], [replace(settings, stop=(stop,))])
    assert text == cut_at_stop(free, (stop,)) and 3 <= tokens < 30
    assert len(model_calls) == tokens  # the row ended at the token that completed the stop: no step after it
    assert backend.decode_stats.row_steps - before == tokens - 1
    # beside a row that runs on, the stopped row leaves the batch: the steps after it compute one row
    model_calls.clear()
    other = replace(settings, stop=("no such stop",))
    backend.generate([prompt, PROMPTS[0]], [replace(settings, stop=(stop,)), other])
    decode_rows = model_calls[1:]
    assert len(decode_rows) >= tokens and decode_rows == [2] * (tokens - 1) + [1] * (len(decode_rows) - tokens + 1)


def gumbel_max(scores: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """The draw through the candidate shortcut: the loop's code path for top_p = 1."""
    u = uniforms(scores, [torch.Generator().manual_seed(s) for s in seeds])
    row, token = gumbel_candidates(scores, u)
    return first_argmax(scores[row, token] - torch.log(-torch.log(u[row, token].clamp_min(1e-20))), row, token,
                        len(scores), scores.shape[-1])


def test_gumbel_shortcut_equals_the_full_gumbel_max():
    torch.manual_seed(0)
    scores = torch.randn(96, 3000) * torch.tensor([0.3, 3.0, 30.0]).repeat(32)[:, None]
    scores[::4, 1000:] = float("-inf")  # a vocabulary partly masked off
    seeds = list(range(96))
    u = torch.stack([torch.rand(3000, generator=torch.Generator().manual_seed(s)) for s in seeds])
    full = (scores - torch.log(-torch.log(u.clamp_min(1e-20)))).argmax(dim=-1)
    assert torch.equal(gumbel_max(scores, seeds), full)
    assert not torch.equal(full, scores.argmax(dim=-1))  # the noise does change tokens at these scales
    # equal values: the lowest token wins, as argmax picks the first
    row, token = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([3, 1, 4, 2, 0, 4])
    assert first_argmax(torch.tensor([1.0, 1.0, 0.5, 2.0, 0.0, 0.0]), row, token, 3, 5).tolist() == [1, 2, 0]


def test_nucleus_is_the_transformers_top_p_set():
    from transformers import TopPLogitsWarper  # noqa: PLC0415

    torch.manual_seed(1)
    # scale 0.01 is nearly uniform over 5000 tokens: the nucleus is far wider than the first top-k of 256
    scores = torch.randn(60, 5000) * torch.tensor([0.01, 1.0, 4.0, 12.0]).repeat(15)[:, None]
    for top_p in (0.3, 0.8, 0.95, 0.999):
        row, token = nucleus(scores, top_p)
        ours = torch.zeros_like(scores, dtype=torch.bool)
        ours[row, token] = True
        assert torch.equal(ours, torch.isfinite(TopPLogitsWarper(top_p)(None, scores))), top_p
        assert len(row) == int(ours.sum())  # no token twice
    assert int((nucleus(scores[:1], 0.95)[0] == 0).sum()) > 256


def rows(lengths: list[int], settings: GenerationSettings) -> list[Row]:
    return [Row(i, [5] * n, settings, frozenset(), ()) for i, n in enumerate(lengths)]


def test_batches_follow_the_token_budget_and_sampling_shape():
    sampled = rows([10, 3, 5, 5], replace(SAMPLE, max_new_tokens=10))
    # by length 3, 5, 5, 10: 1 x 13, 2 x 15, 3 x 15 = 45 fit; with 10, 4 x 20 = 80 > 45
    assert [[r.index for r in b] for b in plan_batches(sampled, 45)] == [[1, 2, 3], [0]]
    # 3 x 15 = 45 > 44 starts a batch at the second 5; with 10 it holds 2 x 20 = 40 <= 44
    assert [[r.index for r in b] for b in plan_batches(sampled, 44)] == [[1, 2], [3, 0]]
    assert [[r.index for r in b] for b in plan_batches(sampled, 1)] == [[1], [2], [3], [0]]  # one row always fits
    greedy = [replace(r, index=4 + r.index, settings=GenerationSettings(max_new_tokens=10)) for r in rows([3], SAMPLE)]
    assert [[r.index for r in b] for b in plan_batches(sampled + greedy, 8192)] == [[1, 2, 3, 0], [4]]


def test_stop_that_is_a_special_token_ends_as_a_token(tiny_tokenizer):
    settings = GenerationSettings(stop=("<unk>", "\nHuman:"))
    assert stop_token_ids(tiny_tokenizer, [settings], [7]) == [7, tiny_tokenizer.eos_token_id,
                                                               tiny_tokenizer.convert_tokens_to_ids("<unk>")]


class CallRecorder:
    """The back end, recording the prompts and seeds of each generate call."""

    def __init__(self, inner):
        self.inner, self.tokenizer, self.model_id = inner, inner.tokenizer, inner.model_id
        self.context_length = inner.context_length
        self.calls: list[list[tuple[str, int, tuple[str, ...]]]] = []

    def token_logprobs(self, requests):
        return self.inner.token_logprobs(requests)

    def generate(self, prompts, settings):
        self.calls.append([(p, s.seed, s.stop) for p, s in zip(prompts, settings)])
        return self.inner.generate(prompts, settings)


def test_generate_sends_a_chunks_prompts_and_samples_in_one_call(backend, tmp_path):
    recorder = CallRecorder(backend)
    prompts = [{"id": f"p{k}", "prompt": p} for k, p in enumerate(["hello", "what is two plus two ?", "bye"])]
    config = GenerateConfig(model="tiny", n=4, max_new_tokens=6, chunk_prompts=2, no_cache=True)
    generate_pairs(prompts, config, tmp_path / "pairs.jsonl", backend=recorder, progress=False)
    assert [len(call) for call in recorder.calls] == [8, 4]
    assert [seed for _, seed, _ in recorder.calls[0]] == [0, 1, 2, 3] * 2
    assert [p for p, _, _ in recorder.calls[0]][3:5] == ["Human: hello\n\nAssistant:",
                                                          "Human: what is two plus two ?\n\nAssistant:"]
    assert {stop for call in recorder.calls for _, _, stop in call} == {response_stops(backend.tokenizer)}
    assert isinstance(backend.decode_stats, DecodeStats) and backend.decode_stats.forwards > 0
