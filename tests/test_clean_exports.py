"""No leaked or mislabelled text in exported data: invented turns and end-of-turn tokens end a response, few-shot
text never reaches an export, judged pairs hold only improvements, empty checks are counted."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from click.testing import CliRunner
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlaif.backends import GenerationSettings, load_backend
from rlaif.cli import cli
from rlaif.generate import GenerateConfig, PairGenerator
from rlaif.io import read_rows
from rlaif.few_shot import COPY_WORDS, all_few_shot, cut_few_shot_copy, few_shot_ngrams, word_ngrams
from rlaif.revise import ReviseConfig, export_chains, revise_prompts
from rlaif.text import end_of_turn_marks, response_stops, trim_response

revise_cli = importlib.import_module("rlaif.cli.revise")  # the module (`rlaif.cli.revise` is also the command)

EXAMPLES = all_few_shot()
FEW_SHOT_GRAMS = few_shot_ngrams(EXAMPLES)
PROMPTS = [{"id": "pod", "prompt": "Make a list of the most popular podcasts."},
           {"id": "egg", "prompt": "How do I boil an egg?"}]


# -- responses end at a new speaker turn -----------------------------------------------------------------------


@pytest.mark.parametrize("raw, kept", [
    # from `rlaif generate` on the default model (plain format): invented named speakers
    ("Sure thing, guys. What's your favorite cut?\n\nPublicity officer: Cheese, that's my favorite.",
     "Sure thing, guys. What's your favorite cut?"),
    ("How long and in your last car?\n\nOfficer: No. 13 left it up to minor.", "How long and in your last car?"),
    ("Dump the trash.\n\nFelt carpet vendor: They were set up.", "Dump the trash."),
    ("A day in class.\n\nCover note:\n\nI read a book.", "A day in class.\n\nCover note:\n\nI read a book."),
    ("What is it?\n\nassistant: Is it that?", "What is it?"),
    ("Good question.\nStudent: why?", "Good question."),
    ("Fine\n**User:** and more", "Fine"),
    ("Assistant: Boil it for 8 minutes.\n\nHuman: thanks", "Boil it for 8 minutes."),
    ("Human: and what about you?", ""),
    # not turns: a heading with its list on the next lines, a label inside a line
    ("Ingredients:\n- eggs\n- water", "Ingredients:\n- eggs\n- water"),
    ("Tip: use a timer. Note: cold water helps.", "Tip: use a timer. Note: cold water helps."),
])
def test_trim_response_cuts_at_any_new_speaker_turn(raw, kept):
    assert trim_response(raw) == kept


def test_named_turns_only_in_plain_transcripts():
    text = "Rate your stay.\n\nCleanliness: How clean was the room?"
    assert trim_response(text) == "Rate your stay."
    assert trim_response(text, named_turns=False) == text  # chat format: a list, ended by the end-of-turn token


def word_tokenizer(vocab: dict[str, int], specials: list[str]) -> PreTrainedTokenizerFast:
    inner = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=inner, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>",
                                   additional_special_tokens=specials)


def test_end_of_turn_marks_from_the_template_and_the_vocabulary():
    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, "<|im_end|>": 3, "<end_of_turn>": 4, "hi": 5}
    chatml = word_tokenizer(vocab, ["<|im_end|>", "<end_of_turn>"])
    chatml.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    assert end_of_turn_marks(chatml) == ("<|im_end|>", "<end_of_turn>")  # the template's first
    plain = word_tokenizer(vocab, ["<end_of_turn>"])
    assert end_of_turn_marks(plain) == ("<end_of_turn>",)  # a base model can write it in plain text too
    assert "<end_of_turn>" in response_stops(plain) and "\nHuman:" in response_stops(plain)
    bare = word_tokenizer({"<pad>": 0, "<unk>": 1, "<eos>": 2, "hi": 3}, [])
    assert end_of_turn_marks(bare) == ()


@pytest.fixture(scope="module")
def bigram_model_dir(tmp_path_factory):
    """A Llama whose layers are switched off, so each next token depends on the current one only:
    ':' -> hello -> <end_of_turn> -> bye -> bye ... (the prompt ends in 'Assistant:')."""
    words = ["<pad>", "<unk>", "<eos>", "<end_of_turn>", "Human", "Assistant", ":", "hello", "bye"]
    vocab = {w: i for i, w in enumerate(words)}
    tokenizer = word_tokenizer(vocab, ["<end_of_turn>"])
    config = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
                         pad_token_id=0, eos_token_id=2, bos_token_id=None)
    model = LlamaForCausalLM(config)
    nxt = {":": "hello", "hello": "<end_of_turn>", "<end_of_turn>": "bye", "bye": "bye"}
    with torch.no_grad():
        for layer in model.model.layers:  # residual stream = the token's embedding
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(len(words), 16))
        model.lm_head.weight.zero_()
        for current, following in nxt.items():
            model.lm_head.weight[vocab[following], vocab[current]] = 20.0
    path = tmp_path_factory.mktemp("bigram")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_end_of_turn_token_stops_generation(bigram_model_dir):
    backend = load_backend(bigram_model_dir)
    prompt = "Human: hi\n\nAssistant:"
    free = backend.generate([prompt], GenerationSettings(max_new_tokens=4))[0]
    stopped = backend.generate([prompt], GenerationSettings(max_new_tokens=4, stop=response_stops(backend.tokenizer)))[0]
    assert "bye" in free  # decoding drops <end_of_turn>: without the stop the next turn's text follows
    assert stopped.strip() == "hello"


def test_generate_stops_responses_at_the_end_of_turn(bigram_model_dir, tmp_path):
    config = GenerateConfig(model=bigram_model_dir, n=2, max_new_tokens=4, temperature=0.5, no_cache=True)
    generator = PairGenerator(config)
    assert "<end_of_turn>" in generator.stops and generator.meta()["stops"] == list(generator.stops)
    assert generator.samples([{"id": "p", "prompt": "hi"}]) == [["hello", "hello"]]


def test_revise_stops_at_the_end_of_turn_too(bigram_model_dir, tmp_path):
    out = tmp_path / "chains.jsonl"
    revise_prompts([{"id": "p", "prompt": "hi"}], ReviseConfig(model=bigram_model_dir, rounds=1, max_new_tokens=4,
                                                               no_cache=True), out, progress=False)
    chain = read_rows(out)[0]
    assert chain["initial"] == "hello" and "bye" not in json.dumps(chain)  # never past <end_of_turn>


# -- few-shot text never reaches an export ------------------------------------------------------------------


def copying_policy(prompt: str) -> str:
    """A small model's habits: the critique repeats example 1's critique, the revision starts in its own words and
    then recites example 1's revision; the initial response is its own."""
    if prompt.endswith("Critique:"):
        return " " + EXAMPLES[0]["critique"]
    if prompt.endswith("Revision:"):
        return " Here are three popular podcasts: Serial, Radiolab and This American Life. " + EXAMPLES[0]["revision"]
    return " I like podcasts about science."


def few_shot_runs(text: str) -> set[tuple[str, ...]]:
    return word_ngrams(text) & FEW_SHOT_GRAMS


def test_few_shot_text_never_reaches_an_export(make_fake, tmp_path):
    out = tmp_path / "chains.jsonl"
    config = ReviseConfig(model="policy", rounds=2, few_shot=2, max_new_tokens=8, no_cache=True)
    summary = revise_prompts(PROMPTS, config, out, backend=make_fake([], rationale=copying_policy), progress=False)
    assert summary["few_shot_copies_cut"] == 4  # both rounds of both prompts copied
    for chain in read_rows(out):
        for step in chain["rounds"]:
            assert step["few_shot_copy_cut"] and not few_shot_runs(step["critique"] + " " + step["revision"])
        assert chain["final"] == "Here are three popular podcasts: Serial, Radiolab and This American Life."
    written = export_chains(out, ["sft", "pairs"])
    assert written["sft"]["records"] == 2 and written["pairs"]["records"] == 2
    for kind in ("sft", "pairs"):
        for record in read_rows(written[kind]["path"]):
            texts = [record[k] for k in ("completion", "chosen", "rejected") if k in record]
            assert texts and not any(few_shot_runs(t) for t in texts), record


def test_exports_leave_out_finals_that_copy_few_shot_text(tmp_path):
    """A chains file written by an older rlaif (no cutting) still exports clean data."""
    copied = {"id": "old", "prompt": "What should I cook?", "initial": "Soup.", "rounds": [],
              "final": "Try pasta. " + EXAMPLES[1]["revision"]}
    clean = {"id": "new", "prompt": "Hi", "initial": "Hello.", "rounds": [], "final": "Hello! How can I help?"}
    out = tmp_path / "old.jsonl"
    out.write_text("".join(json.dumps(c) + "\n" for c in (copied, clean)))
    written = export_chains(out, ["sft", "pairs"])
    assert [r["id"] for r in read_rows(written["sft"]["path"])] == ["new"]
    assert written["sft"]["skipped_by_reason"] == {"few-shot text": 1}
    assert written["pairs"]["skipped_by_reason"] == {"few-shot text": 1}


def test_a_prompt_that_quotes_an_example_is_not_a_copy():
    conversation = EXAMPLES[0]["conversation"]  # the user pasted the paper's arson conversation
    answer = "You wrote: " + conversation.split("\n")[0].removeprefix("Human: ")
    assert cut_few_shot_copy(answer, FEW_SHOT_GRAMS, word_ngrams(conversation)) == (answer, False)
    assert cut_few_shot_copy(answer, FEW_SHOT_GRAMS)[1] and COPY_WORDS == 8


# -- judged pairs: only what the judge preferred -------------------------------------------------------------


def test_judged_pairs_hold_only_improvements(tmp_path):
    chains = [{"id": str(i), "prompt": f"q{i}", "initial": f"old {i}", "rounds": [], "final": f"new {i}",
               "p_final_better": p} for i, p in enumerate([0.8, 0.3, 0.5, 0.51])]
    chains.append({"id": "same", "prompt": "q", "initial": "x", "rounds": [], "final": "x", "p_final_better": 0.5})
    out = tmp_path / "judged.jsonl"
    out.write_text("".join(json.dumps(c) + "\n" for c in chains))
    written = export_chains(out, ["pairs", "sft"])
    pairs = read_rows(written["pairs"]["path"])
    assert [(r["id"], r["chosen"], r["rejected"], r["p_final_better"]) for r in pairs] == [
        ("0", "new 0", "old 0", 0.8), ("3", "new 3", "old 3", 0.51)]
    assert written["pairs"]["skipped_by_reason"] == {"final equals initial": 1, "judge did not prefer the final": 2}
    assert written["sft"]["records"] == 5  # SFT keeps every non-empty final, as SL-CAI trains on them


# -- check-as-context: empty checks are counted and reported ---------------------------------------------------


def mute_checker(prompt: str) -> str:
    return "" if prompt.endswith("Verdict:") else " Boil it for eight minutes."


def test_empty_checks_are_counted_and_reported(make_fake, tmp_path, monkeypatch):
    real = revise_cli.revise_prompts
    monkeypatch.setattr(revise_cli, "revise_prompts",
                        lambda *a, **kw: real(*a, **kw, backend=make_fake([], rationale=mute_checker)))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    out = tmp_path / "cac.jsonl"
    result = CliRunner().invoke(cli, ["revise", "--prompts", str(prompts), "--out", str(out), "--model", "fake",
                                      "--mode", "check-as-context", "--rounds", "2", "--no-cache"])
    assert result.exit_code == 0, result.output
    rounds = [r for chain in read_rows(out) for r in chain["rounds"]]
    assert [r["check_empty"] for r in rounds] == [True] * 4 and {r["verdict"] for r in rounds} == {"unclear"}
    assert "Check verdicts: unclear 4; 4 of 4 checks empty" in result.output
    assert "Warning: most checks are empty" in result.output
    assert json.loads((tmp_path / "cac.jsonl.meta.json").read_text())["empty_checks"] == 4
