"""d-RLAIF: the score equals a hand computation from known log-probs, incl. ratings 1 and 10."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlaif.backends import TokenRequest
from rlaif.cli import cli
from rlaif.drlaif import DRLAIFScorer, ScoreConfig, expected_rating, rating_to_score
from rlaif.errors import RlaifError
from rlaif.rl.ppo import ppo_trl_installed

WORDS = ("Consider the following conversation between a human and an assistant Human Assistant Rate assistant's "
         "last response on scale of to where is worst best Rating : ( ) - . , how do i bake bread good bad").split()

# Known first-token probabilities after the prompt, and P("0" | "1") = 0.5, so P(10) = 0.05 and P(1) = 0.1 - 0.05.
FIRST = {"1": 0.10, "2": 0.10, "3": 0.05, "4": 0.05, "5": 0.20, "6": 0.05, "7": 0.05, "8": 0.05, "9": 0.10}
AFTER_ONE = {"0": 0.5}
# Hand computation: P = {1: .05, 2: .1, 3: .05, 4: .05, 5: .2, 6: .05, 7: .05, 8: .05, 9: .1, 10: .05}, total .75
#   sum_i i*P(i) = .05+.2+.15+.2+1.0+.3+.35+.4+.9+.5 = 4.05; mean = 4.05 / .75 = 5.4; score = (5.4-5.5)/4.5
HAND_MEAN = 5.4
HAND_SCORE = -0.1 / 4.5


def make_tokenizer() -> PreTrainedTokenizerFast:
    digits = [str(d) for d in range(10)]
    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(WORDS + digits))}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


class FakeBackend:
    """Log-probs from the tables above: after the prompt the rating digits, after the prompt + '1' the '0'."""

    model_id = "fake-drlaif"

    def __init__(self):
        self.tokenizer = make_tokenizer()
        self.calls = 0
        vocab = self.tokenizer.get_vocab()
        self.one = vocab["1"]
        self.ids = {vocab[d]: d for d in "0123456789"}

    def token_logprobs(self, requests: list[TokenRequest]) -> list[list[float]]:
        self.calls += 1
        return [[self._logprob(r.ids, pos, tok, min(p for p, _ in r.reads)) for pos, tok in r.reads] for r in requests]

    def _logprob(self, ids, pos, tok, prompt_end) -> float:
        digit = self.ids.get(tok)
        if pos == prompt_end:
            return math.log(FIRST.get(digit, 1e-12))
        if pos == prompt_end + 1 and ids[pos] == self.one:
            return math.log(AFTER_ONE.get(digit, 1e-12))
        return math.log(1e-12)

    def generate(self, prompts, settings):
        raise AssertionError("d-RLAIF does not generate")


def test_expected_rating_and_normalisation_by_hand():
    assert expected_rating({"1": 0.5, "10": 0.5}) == pytest.approx(5.5)
    assert rating_to_score(10.0) == 1.0
    assert rating_to_score(1.0) == -1.0
    assert rating_to_score(5.5) == 0.0


def test_score_equals_hand_computation_with_ratings_1_and_10(tmp_path):
    backend = FakeBackend()
    scorer = DRLAIFScorer(ScoreConfig(cache_dir=str(tmp_path)), backend=backend)
    [results] = scorer.rate(["Human: how do i bake bread"], ["good bread"])
    probs = results[0].probs
    assert probs["10"] == pytest.approx(0.05 / 0.75)
    assert probs["1"] == pytest.approx(0.05 / 0.75)  # P("1") minus the "10" that starts with it
    assert probs["5"] == pytest.approx(0.20 / 0.75)
    assert results[0].mass == pytest.approx(0.75)
    assert expected_rating(probs) == pytest.approx(HAND_MEAN)
    assert scorer(["how do i bake bread"], ["good bread"]) == pytest.approx([HAND_SCORE])


def test_scorer_has_trl_reward_signature_and_reads_conversations(tmp_path):
    backend = FakeBackend()
    scorer = DRLAIFScorer(ScoreConfig(cache_dir=str(tmp_path)), backend=backend)
    chat_prompt = [{"role": "user", "content": "how do i bake bread"}]
    chat_completion = [{"role": "assistant", "content": "good bread"}]
    scores = scorer(prompts=[chat_prompt, "how do i bake bread"], completions=[chat_completion, "bad"], trainer_state=None)
    assert scores == pytest.approx([HAND_SCORE, HAND_SCORE])
    calls = backend.calls
    scorer(prompts=[chat_prompt], completions=[chat_completion])
    assert backend.calls == calls  # the second time comes from the cache


def test_several_principles_are_averaged_and_unknown_one_fails(tmp_path):
    backend = FakeBackend()
    config = ScoreConfig(principle=("harmless-ethical", "ethical-moral"), cache_dir=str(tmp_path))
    assert DRLAIFScorer(config, backend=backend)(["hi"], ["good"]) == pytest.approx([HAND_SCORE])
    with pytest.raises(RlaifError, match="Did you mean"):
        DRLAIFScorer(ScoreConfig(principle=("harmless-ethicl",), cache_dir=str(tmp_path)), backend=backend)


def test_mismatched_lengths_fail(tmp_path):
    scorer = DRLAIFScorer(ScoreConfig(cache_dir=str(tmp_path)), backend=FakeBackend())
    with pytest.raises(RlaifError, match="pair up"):
        scorer(["a", "b"], ["c"])


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-drlaif")
    tok = make_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, pad_token_id=0)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_cli_scores_resumes_and_reports(tiny_model_dir, tmp_path):
    data = tmp_path / "responses.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "prompt": "how do i bake bread", "response": text}) + "\n"
                            for i, text in enumerate(["good bread", "bad", "good good"])))
    out = tmp_path / "scores.jsonl"
    args = ["score", "--input", str(data), "--out", str(out), "--model", str(tiny_model_dir), "--cache-dir", str(tmp_path / "c")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["r0", "r1", "r2"]
    for row in rows:
        assert sum(row["p_ratings"].values()) == pytest.approx(1.0)
        assert row["mean_rating"] == pytest.approx(sum(int(k) * v for k, v in row["p_ratings"].items()))
        assert row["score"] == pytest.approx((row["mean_rating"] - 5.5) / 4.5)
        assert -1.0 <= row["score"] <= 1.0
    again = CliRunner().invoke(cli, args)
    assert again.exit_code != 0 and "--resume" in again.output
    resumed = CliRunner().invoke(cli, args + ["--resume"])
    assert resumed.exit_code == 0
    assert len(out.read_text().splitlines()) == 3


def test_cli_missing_column_is_one_line_error(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "x", "completion": "y"}) + "\n")
    result = CliRunner().invoke(cli, ["score", "--input", str(data), "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code != 0
    assert "lacks column" in result.output and "--column-map" in result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(not ppo_trl_installed(), reason="needs the ppo extra's TRL (1.12); .ci/ppo-extra.sh runs it")
def test_ppo_step_uses_the_drlaif_scores_of_the_decoded_texts(tiny_model_dir, tmp_path, monkeypatch):
    """One PPO run rewarded by d-RLAIF on a feedback model with another tokenizer than the policy's."""
    import trl.experimental.ppo.ppo_trainer as ppo_trainer

    from rlaif.rl.ppo import PPORunConfig, run_ppo
    from rlaif.rl.rewards import TextRewardModel

    words = "how do i bake bread can you help me good bad yes no".split()
    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    policy_tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    policy_dir = tmp_path / "policy"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                 pad_token_id=0, eos_token_id=2, bos_token_id=None)).save_pretrained(policy_dir)
    policy_tok.save_pretrained(policy_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["how do i bake bread", "can you help me"]))

    scorer = DRLAIFScorer(ScoreConfig(model=str(tiny_model_dir), no_cache=True))
    seen = []
    real_get_reward = ppo_trainer.get_reward

    def spy(model, query_responses, pad_token_id, context_length):
        result = real_get_reward(model, query_responses, pad_token_id, context_length)
        if isinstance(model, TextRewardModel):
            seen.append(result[1].clone())
        return result

    calls = []

    def reward_fn(prompts, completions, **kwargs):
        calls.append((list(prompts), list(completions)))
        return scorer(prompts, completions)

    monkeypatch.setattr(ppo_trainer, "get_reward", spy)
    config = PPORunConfig(prompts=str(prompts), policy=str(policy_dir), output_dir=str(tmp_path / "run"),
                          reward_model="unused", steps=1, batch_size=2, ppo_epochs=1, response_length=4,
                          learning_rate=1e-2, seed=1)
    run_ppo(config, reward_fn=reward_fn)
    assert len(seen) == len(calls) == 1
    fresh = DRLAIFScorer(ScoreConfig(model=str(tiny_model_dir), no_cache=True))
    assert seen[0].tolist() == pytest.approx(fresh(*calls[0]), abs=1e-5)


def test_resume_with_other_settings_is_refused(tiny_model_dir, tmp_path):
    data = tmp_path / "responses.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "prompt": "hi", "response": "good"}) + "\n" for i in range(2)))
    out = tmp_path / "scores.jsonl"
    base = ["score", "--input", str(data), "--out", str(out), "--model", str(tiny_model_dir), "--no-cache"]
    assert CliRunner().invoke(cli, base + ["--limit", "1"]).exit_code == 0
    other = CliRunner().invoke(cli, base + ["--principle", "ethical-moral", "--resume"])
    assert other.exit_code == 1 and "other settings" in other.output
    same = CliRunner().invoke(cli, base + ["--resume"])
    assert same.exit_code == 0 and len(out.read_text().splitlines()) == 2
