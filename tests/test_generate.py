"""`rlaif generate`: pair formation and drop counts by hand, seeded sampling and the sample cache on a tiny Llama, CLI."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlaif.backends import GenerationSettings, load_backend
from rlaif.cli import cli
from rlaif.errors import RlaifError
from rlaif.generate import (
    GenerateConfig,
    form_pairs,
    generate_pairs,
    sample_settings,
)
from rlaif.text import render_prompt, resolve_prompt_format, to_messages, trim_response
from rlaif.io import read_records, read_rows

PROMPTS = [{"id": "p1", "prompt": "hello"}, {"id": "p2", "prompt": "what is two plus two ?"},
           {"id": "p3", "prompt": "Human: hello\n\nAssistant: yes\n\nHuman: bye"}]


class CountingBackend:
    """A real back end that records every prompt it is asked to continue, with the seed it got."""

    def __init__(self, inner):
        self.inner = inner
        self.tokenizer = inner.tokenizer
        self.model_id = inner.model_id
        self.context_length = inner.context_length
        self.generated: list[tuple[str, int]] = []

    def token_logprobs(self, requests):
        return self.inner.token_logprobs(requests)

    def generate(self, prompts, settings):
        self.generated += [(p, s.seed) for p, s in zip(prompts, settings)]
        return self.inner.generate(prompts, settings)


@pytest.fixture(scope="module")
def hf_backend(tiny_model_dir):
    return load_backend(tiny_model_dir)


def config(**overrides) -> GenerateConfig:
    return GenerateConfig(**{"model": "tiny", "n": 2, "max_new_tokens": 6, "no_cache": True, **overrides})


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_form_pairs_adjacent_drops_identical_and_empty():
    prompt = {"id": "q", "prompt": "hi"}
    pairs, dropped = form_pairs(prompt, ["x", "y", "x", " x ", "", "z"], "adjacent")
    assert [(p["response_a"], p["response_b"], p["samples"]) for p in pairs] == [("x", "y", [0, 1])]
    assert pairs[0]["id"] == "q-s0-s1" and pairs[0]["prompt_id"] == "q" and pairs[0]["prompt"] == "hi"
    assert dropped == {"identical": 1, "empty": 1}


def test_form_pairs_all_drops_repeated_pairs():
    pairs, dropped = form_pairs({"id": "q", "prompt": "hi"}, ["x", "y", "x", " y ", "z"], "all")
    # 10 combinations: (0,1) x-y, (0,4) x-z, (1,4) y-z are new; (0,2) (1,3) identical; the rest repeat x-y / x-z / y-z
    assert [p["samples"] for p in pairs] == [[0, 1], [0, 4], [1, 4]]
    assert dropped == {"identical": 2, "duplicate": 5}


def test_prompt_rendering_plain_and_chat(tiny_tokenizer):
    assert to_messages("Human: hi\n\nAssistant: yes\n\nHuman: bye\n\nAssistant:") == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}, {"role": "user", "content": "bye"}]
    assert to_messages("what is two plus two?") == [{"role": "user", "content": "what is two plus two?"}]
    assert render_prompt(tiny_tokenizer, "hello", "plain") == "Human: hello\n\nAssistant:"
    assert resolve_prompt_format(tiny_tokenizer, "auto") == "plain"
    with pytest.raises(RlaifError, match="needs a tokenizer with a chat template"):
        resolve_prompt_format(tiny_tokenizer, "chat")
    chat = copy.deepcopy(tiny_tokenizer)
    chat.chat_template = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}<assistant>"
    assert resolve_prompt_format(chat, "auto") == "chat"
    assert render_prompt(chat, "Human: hi\n\nAssistant: yes\n\nHuman: bye", "chat") == (
        "<user> hi <assistant> yes <user> bye <assistant>")
    assert trim_response(" yes\n\nHuman: more") == "yes"


def test_sample_seed_depends_on_index_not_n():
    assert sample_settings(config(seed=3), 1).seed == sample_settings(config(seed=3, n=8), 1).seed == 3 * 1000003 + 1
    assert sample_settings(config(seed=3), 0).seed != sample_settings(config(seed=4), 0).seed


def test_hf_sampling_does_not_depend_on_batching(hf_backend):
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0, seed=11)
    long_prompt = "Human: what is two plus two ? Assistant:"
    together = hf_backend.generate(["Human: hello Assistant:", long_prompt], settings)
    alone = hf_backend.generate([long_prompt], settings)
    hf_backend.batch_tokens = 512  # one row a batch
    try:
        one_by_one = hf_backend.generate(["Human: hello Assistant:", long_prompt], settings)
    finally:
        hf_backend.batch_tokens = 8192
    assert together[1] == alone[0] and together == one_by_one
    other_seed = hf_backend.generate(["Human: hello Assistant:", long_prompt], replace(settings, seed=12))
    assert other_seed != together
    # a nucleus so small it keeps one token is greedy decoding
    greedy = hf_backend.generate([long_prompt], GenerationSettings(max_new_tokens=8, temperature=0.0))
    assert hf_backend.generate([long_prompt], replace(settings, top_p=1e-9)) == greedy


def test_same_seed_same_pairs_and_larger_n_samples_only_new(hf_backend, tmp_path):
    backend = CountingBackend(hf_backend)
    cached = {"no_cache": False, "cache_dir": str(tmp_path / "cache")}
    first = generate_pairs(PROMPTS, config(**cached), tmp_path / "a.jsonl", backend=backend, progress=False)
    assert len(backend.generated) == 2 * len(PROMPTS) and first["samples_generated"] == 6
    rerun = generate_pairs(PROMPTS, config(**cached), tmp_path / "a.jsonl", overwrite=True, backend=backend,
                           progress=False)
    assert len(backend.generated) == 6 and rerun["samples_from_cache"] == 6 and rerun["samples_generated"] == 0
    four = generate_pairs(PROMPTS, config(n=4, **cached), tmp_path / "b.jsonl", backend=backend, progress=False)
    new_seeds = sorted({seed for _, seed in backend.generated[6:]})
    assert len(backend.generated) == 12 and new_seeds == [2, 3] and four["samples_from_cache"] == 6
    # without any cache, other chunking and batching: the same texts
    fresh = generate_pairs(PROMPTS, config(n=4, chunk_prompts=1, backend_options={"batch_tokens": 512}), tmp_path / "c.jsonl",
                           backend=hf_backend, progress=False)
    assert fresh["samples_generated"] == 12
    assert lines(tmp_path / "c.jsonl") == lines(tmp_path / "b.jsonl")
    two = {p["id"]: p for p in lines(tmp_path / "a.jsonl")}
    assert all(two[p["id"]] == p for p in lines(tmp_path / "b.jsonl") if p["samples"] == [0, 1])
    other = generate_pairs(PROMPTS, config(seed=1), tmp_path / "d.jsonl", backend=hf_backend, progress=False)
    assert other["pairs_in_file"] and lines(tmp_path / "d.jsonl") != lines(tmp_path / "a.jsonl")


def test_identical_samples_are_dropped_and_counted(hf_backend, tmp_path):
    summary = generate_pairs(PROMPTS, config(n=4, pairs="all", top_p=1e-9), tmp_path / "same.jsonl",
                             backend=hf_backend, progress=False)
    assert summary["dropped_identical"] == 6 * len(PROMPTS) and summary["pairs_in_file"] == 0
    assert summary["dropped_duplicate"] == 0 and summary["dropped_empty"] == 0


def test_pairs_feed_label_and_resume_samples_only_missing_prompts(hf_backend, tmp_path):
    out = tmp_path / "pairs.jsonl"
    backend = CountingBackend(hf_backend)
    generate_pairs(PROMPTS[:2], config(), out, backend=backend, progress=False)
    summary = generate_pairs(PROMPTS, config(), out, backend=backend, progress=False)
    assert summary["prompts_this_run"] == 1 and len(backend.generated) == 6
    assert {p for p, _ in backend.generated[4:]} == {"Human: hello\n\nAssistant: yes\n\nHuman: bye\n\nAssistant:"}
    pairs = read_records(out, ["prompt", "response_a", "response_b"])  # what `rlaif label --input` reads
    assert sorted(p["id"] for p in pairs) == ["p1-s0-s1", "p2-s0-s1", "p3-s0-s1"]
    meta = json.loads((tmp_path / "pairs.jsonl.meta.json").read_text())
    assert meta["prompt_format"] == "plain" and meta["config"]["n"] == 2 and meta["status"] == "done"
    with pytest.raises(RlaifError, match="other settings"):
        generate_pairs(PROMPTS, config(n=4), out, backend=backend, progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 1}, "at least 2"), ({"n": 3}, "unpaired"), ({"temperature": 0.0}, "greedy"), ({"top_p": 0.0}, "top-p"),
])
def test_bad_settings_say_how_to_fix(kwargs, message):
    with pytest.raises(RlaifError, match=message):
        config(**kwargs)


def test_cli_generate_with_config_file_and_errors(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    conf = tmp_path / "gen.yaml"
    conf.write_text(f"model: {tiny_model_dir}\nn: 4\npairs: all\nmax-new-tokens: 5\nseed: 2\n")
    out = tmp_path / "out.jsonl"
    runner = CliRunner()
    result = runner.invoke(cli, ["generate", "--config", str(conf), "--prompts", str(prompts), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "3 prompt(s) this run" in result.output and "12 samples generated" in result.output
    assert len(read_rows(out)) + sum(json.loads((tmp_path / "out.jsonl.meta.json").read_text())[k]
                                     for k in ("dropped_identical", "dropped_duplicate", "dropped_empty")) == 18
    again = runner.invoke(cli, ["generate", "--config", str(conf), "--prompts", str(prompts), "--out", str(out)])
    assert again.exit_code == 1 and "--resume" in again.output
    bad_n = runner.invoke(cli, ["generate", "--prompts", str(prompts), "--out", str(tmp_path / "x.jsonl"),
                                "--model", tiny_model_dir, "--n", "1"])
    assert bad_n.exit_code == 2 and "Invalid value for '--n': 1 is not in the range x>=2" in bad_n.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"id": "e", "prompt": "  "}\n')
    result = runner.invoke(cli, ["generate", "--prompts", str(empty), "--out", str(tmp_path / "y.jsonl"),
                                 "--model", tiny_model_dir])
    assert result.exit_code == 1 and "'prompt' is empty" in result.output


def test_chat_template_bos_is_not_doubled(tmp_path):
    import torch  # noqa: PLC0415
    from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: PLC0415
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: PLC0415

    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, "<bos>": 3, "hello": 4, "bye": 5}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    inner.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>",
                                  bos_token="<bos>")
    tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }} {% endfor %}bye"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=6, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    backend = load_backend(str(tmp_path))
    calls = []  # the ids of every forward pass (the first of a generate call holds the prompts, left-padded)
    forward = backend.model.forward

    def spy(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        calls.append([[t for t in row if t != 0] for row in ids.tolist()])
        return forward(*args, **kwargs)

    backend.model.forward = spy
    prompt = render_prompt(backend.tokenizer, "hello", resolve_prompt_format(backend.tokenizer, "auto"))
    assert prompt == "<bos>hello bye"
    backend.generate([prompt, "hello"], GenerationSettings(max_new_tokens=1))
    assert sorted(calls[0]) == [[3, 4], [3, 4, 5]]  # one BOS each: the chat template's, or the tokenizer's
    calls.clear()
    backend.generate(["hello"], GenerationSettings(max_new_tokens=1))
    assert calls[0] == [[3, 4]]
