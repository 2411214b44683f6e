"""PPO on tiny local models: the rewards TRL uses are the text scorer's, the policy learns, LoRA needs
no reference copy, a SIGKILLed run resumes.

`rlaif ppo` needs the ppo extra (TRL 1.12; PPOTrainer left TRL in 1.13). Tests that train skip
where a newer TRL is installed (the main dev venv) and run in the ppo venv that
.ci/ppo-extra.sh builds; the adapter and reward-model tests run everywhere.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

import rl_kill
from rlaif.cli import cli
from rlaif.errors import RlaifError
from rlaif.rl.ppo import PPORunConfig, build_prompt_dataset, load_policy_tokenizer, ppo_trl_installed, run_ppo
from rlaif.rl.rewards import RewardModelFunction, TextRewardModel

PPO_TRL = ppo_trl_installed()
needs_ppo_trl = pytest.mark.skipif(
    not PPO_TRL, reason="needs the ppo extra's TRL (1.12; PPOTrainer left TRL in 1.13): .ci/ppo-extra.sh runs these "
                        "in a venv with pip install -e '.[dev,ppo]'")

POLICY_WORDS = "how do i bake bread can you help me with my homework is it safe to walk at night good bad yes no".split()
RM_WORDS = ("user assistant zebra night at walk the good bad help bread yes no i how do me can you bake my homework "
            "with is it safe to").split()
PROMPTS = ["how do i bake bread", "can you help me with my homework", "is it safe to walk at night", "do you bake"]


def make_tokenizer(words: list[str], chat: bool) -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    if chat:
        tok.chat_template = (
            "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}assistant {% endif %}"
        )
    return tok


def llama_config(vocab_size: int, **kwargs) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                       pad_token_id=0, eos_token_id=2, bos_token_id=None, **kwargs)


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("policy")
    tok = make_tokenizer(POLICY_WORDS, chat=False)
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config(len(tok))).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def reward_model_dir(tmp_path_factory):
    """A reward model whose tokenizer differs from the policy's (other ids, chat template)."""
    path = tmp_path_factory.mktemp("rm")
    tok = make_tokenizer(RM_WORDS, chat=True)
    torch.manual_seed(1)
    LlamaForSequenceClassification(llama_config(len(tok), num_labels=1)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def good_share(prompts: list[str], completions: list[str], **_) -> list[float]:
    """Deterministic text reward: 'good' words, a little for length, a trace of the prompt's length."""
    return [c.split().count("good") + 0.1 * len(c.split()) + 0.001 * len(p) for p, c in zip(prompts, completions)]


def config(prompts_file, policy_dir, out, **kwargs) -> PPORunConfig:
    base = dict(prompts=str(prompts_file), policy=str(policy_dir), output_dir=str(out), reward_model="unused",
                steps=2, batch_size=2, ppo_epochs=1, response_length=6, learning_rate=1e-2, seed=3)
    return PPORunConfig(**{**base, **kwargs})


@needs_ppo_trl
def test_ppo_rewards_equal_scorer_on_decoded_texts_and_policy_changes(
    prompts_file, policy_dir, tmp_path, monkeypatch, caplog
):
    import trl.experimental.ppo.ppo_trainer as ppo_trainer

    used = []  # (query_responses, context_length, scores) of every reward call TRL made
    real_get_reward = ppo_trainer.get_reward

    def spy(model, query_responses, pad_token_id, context_length):
        result = real_get_reward(model, query_responses, pad_token_id, context_length)
        if isinstance(model, TextRewardModel):
            used.append((query_responses.clone(), context_length, result[1].clone()))
        return result

    def reward_fn(prompts, completions, **kwargs):
        calls.append((prompts, completions))
        return good_share(prompts, completions)

    calls = []
    monkeypatch.setattr(ppo_trainer, "get_reward", spy)
    with caplog.at_level(logging.INFO, logger="rlaif.rl.ppo"):
        result = run_ppo(config(prompts_file, policy_dir, tmp_path), reward_fn=reward_fn)
    assert "no chat template" in caplog.text

    tok = load_policy_tokenizer(str(policy_dir))
    assert len(used) == len(calls) == 2
    for (query_responses, context_length, scores), call in zip(used, calls, strict=True):
        prompts, completions = [], []
        for row in query_responses.tolist():
            prompt_ids = [t for t in row[:context_length] if t != tok.pad_token_id]
            prompts.append(next(p for p in PROMPTS if tok(p)["input_ids"] == prompt_ids))
            response = row[context_length:]
            cut = response.index(tok.pad_token_id) if tok.pad_token_id in response else len(response)
            completions.append(tok.decode(response[:cut], skip_special_tokens=True))
        assert call == (prompts, completions)
        assert scores.tolist() == pytest.approx(good_share(prompts, completions), abs=1e-6)

    rows = [json.loads(line) for line in (tmp_path / "ppo_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row, (_, _, scores) in zip(rows, used, strict=True):
        assert row["reward_mean"] == pytest.approx(scores.mean().item(), abs=1e-6)
        assert 1 <= row["response_length_mean"] <= 6
        assert row["kl"] is not None
    assert (tmp_path / "ppo_curve.png").stat().st_size > 1000

    before = AutoModelForCausalLM.from_pretrained(policy_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(result["policy_dir"]).state_dict()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_text_reward_model_splits_prompt_and_response(policy_dir):
    tok = load_policy_tokenizer(str(policy_dir))
    dataset, texts = build_prompt_dataset(PROMPTS, tok, max_prompt_length=32)
    width = len(dataset[0]["input_ids"])
    assert width == 7  # "can you help me with my homework"
    seen = []

    def reward_fn(prompts, completions):
        seen.append((prompts, completions))
        return [0.5, -1.0]

    model = TextRewardModel(reward_fn, tok, width, texts)
    response = tok(" yes good", add_special_tokens=False)["input_ids"] + [tok.eos_token_id, 0, 0]
    rows = torch.tensor([dataset[0]["input_ids"] + response, dataset[3]["input_ids"] + response])
    mask = rows != 0
    scores = model(input_ids=rows.masked_fill(~mask, 0), attention_mask=mask)
    assert scores.tolist() == [0.5, -1.0]
    assert seen == [(["how do i bake bread", "do you bake"], ["yes good", "yes good"])]
    assert [b["lengths"] for b in model.pop_batches()] == [[3, 3]]  # "yes", "good", EOS


def test_reward_model_function_uses_its_own_tokenizer(reward_model_dir):
    rm = RewardModelFunction(reward_model_dir, batch_size=3)
    prompts, completions = ["how do i bake bread", "can you help", "is it safe"], ["good", "no no bad", "yes"]
    got = rm(prompts, completions)
    model = LlamaForSequenceClassification.from_pretrained(reward_model_dir).eval()
    for prompt, completion, score in zip(prompts, completions, got, strict=True):
        text = f"user {prompt} assistant {completion} "  # the RM's own chat template
        ids = rm.tokenizer(text, return_tensors="pt")["input_ids"]
        assert 1 not in ids.tolist()[0]  # every word known to the RM's vocabulary
        with torch.no_grad():
            assert score == pytest.approx(model(input_ids=ids).logits[0, 0].item(), abs=1e-5)
    assert len(set(got)) == 3


def test_reward_model_with_two_labels_is_refused(prompts_file, policy_dir, tmp_path):
    tok = make_tokenizer(RM_WORDS, chat=False)
    LlamaForSequenceClassification(llama_config(len(tok), num_labels=2)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(RlaifError, match="num_labels=2.*num_labels=1"):
        RewardModelFunction(tmp_path)
    if not PPO_TRL:
        return  # the CLI half needs the ppo extra
    result = CliRunner().invoke(cli, ["ppo", "--prompts", str(prompts_file), "--policy", str(policy_dir),
                                      "--output-dir", str(tmp_path / "out"), "--reward-model", str(tmp_path),
                                      "--batch-size", "2"])
    assert result.exit_code == 1
    assert "num_labels=2" in result.output and "Traceback" not in result.output


def test_long_prompts_lose_their_beginning(policy_dir, caplog):
    tok = load_policy_tokenizer(str(policy_dir))
    with caplog.at_level(logging.WARNING, logger="rlaif.rl.ppo"):
        dataset, texts = build_prompt_dataset(["how do i bake bread", "do you"], tok, max_prompt_length=3)
    assert "1 of 2 prompts exceed max_prompt_length=3" in caplog.text
    assert dataset["input_ids"] == [tok("i bake bread")["input_ids"], [0] + tok("do you")["input_ids"]]
    assert texts[tuple(tok("i bake bread")["input_ids"])] == "how do i bake bread"


def test_chat_template_is_used_when_present(reward_model_dir):
    tok = load_policy_tokenizer(str(reward_model_dir))
    dataset, _ = build_prompt_dataset(["how do i bake bread"], tok, max_prompt_length=32)
    assert tok.decode(dataset[0]["input_ids"]) == "user how do i bake bread assistant"
    dataset, _ = build_prompt_dataset(["how do i bake bread"], tok, max_prompt_length=32, plain=True)
    assert tok.decode(dataset[0]["input_ids"]) == "how do i bake bread"


@needs_ppo_trl
@pytest.mark.parametrize(
    "change, message",
    [
        (dict(reward_model=None), "exactly one reward"),
        (dict(d_rlaif=True), "exactly one reward"),
        (dict(batch_size=3, mini_batches=2), "multiple of mini_batches"),
        (dict(batch_size=4, mini_batches=2, micro_batch_size=1), "needs --mini-batches 1"),
        (dict(micro_batch_size=3), "multiple of micro_batch_size 3"),
        (dict(response_length=60), "exceed the policy's context of 64"),
        (dict(batch_size=8), "fewer than batch_size 8"),
    ],
)
def test_bad_settings_say_how_to_fix(prompts_file, policy_dir, tmp_path, change, message):
    bad = config(prompts_file, policy_dir, tmp_path, **change)
    with pytest.raises(RlaifError, match=message):
        run_ppo(bad, reward_fn=good_share)


@needs_ppo_trl
def test_cli_trains_against_a_reward_model_with_another_tokenizer(prompts_file, policy_dir, reward_model_dir, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "ppo", "--prompts", str(prompts_file), "--policy", str(policy_dir), "--reward-model", str(reward_model_dir),
        "--output-dir", str(out), "--steps", "2", "--batch-size", "2", "--ppo-epochs", "1", "--response-length", "4",
    ])
    assert result.exit_code == 0, result.output
    assert "2 PPO steps" in result.output
    assert len((out / "ppo_log.jsonl").read_text().splitlines()) == 2
    assert (out / "policy" / "config.json").exists() and (out / "ppo_curve.png").exists()
    assert json.loads((out / "ppo_log.jsonl.meta.json").read_text())["config"]["reward_model"] == str(reward_model_dir)


@needs_ppo_trl
def test_lora_policy_and_value_with_the_adapter_disabled_policy_as_reference(prompts_file, policy_dir, tmp_path,
                                                                              monkeypatch):
    import trl.experimental.ppo.ppo_trainer as ppo_trainer

    trainers = []
    real_init = ppo_trainer.PPOTrainer.__init__

    def spy_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        trainers.append(self)

    monkeypatch.setattr(ppo_trainer.PPOTrainer, "__init__", spy_init)
    out = tmp_path / "run"
    result = run_ppo(config(prompts_file, policy_dir, out, lora_r=4, lora_alpha=8, steps=3, kl_coef=0.5),
                     reward_fn=good_share)
    (trainer,) = trainers
    assert trainer.ref_model is None and trainer.is_peft_model  # no reference copy: adapters disabled instead
    policy_trainable = [n for n, p in trainer.model.value_model.named_parameters() if p.requires_grad]
    assert policy_trainable and all("lora_" in n or "score" in n for n in policy_trainable)
    kl = [json.loads(line)["kl"] for line in (out / "ppo_log.jsonl").read_text().splitlines()]
    assert kl[0] == pytest.approx(0.0, abs=1e-6)  # adapters start at zero: policy = base at step 1
    assert abs(kl[2]) > 1e-6  # then the adapters moved and the reference (the base) did not
    assert result["reference"] == "adapter-disabled base"
    assert (out / "policy-adapter" / "adapter_config.json").exists()
    before = AutoModelForCausalLM.from_pretrained(policy_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out / "policy").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@needs_ppo_trl
def test_sigkilled_ppo_resumes_from_its_last_complete_checkpoint(prompts_file, policy_dir, tmp_path):
    """Kill 1 dies while saving checkpoint 4 (files written, marker not): the resume falls back to 2.
    Kill 2 dies scoring update 5 (checkpoint 4 complete by then): the resume runs updates 5 and 6 only."""
    rl_kill.write_helpers(tmp_path)
    out = tmp_path / "run"
    args = ["ppo", "--prompts", str(prompts_file), "--policy", str(policy_dir), "--output-dir", str(out),
            "--reward-fn", "kill_reward:reward", "--steps", "6", "--save-steps", "2", "--batch-size", "2",
            "--ppo-epochs", "1", "--response-length", "5", "--learning-rate", "1e-2"]
    first = rl_kill.run_rlaif(tmp_path, args, kill_at_save=4)
    assert first.returncode == -9, first.stderr[-2000:]
    assert rl_kill.logged_steps(out / "ppo_log.jsonl") == [1, 2, 3, 4]
    second = rl_kill.run_rlaif(tmp_path, [*args, "--resume"], kill_at_call=3)
    assert second.returncode == -9, second.stderr[-2000:]
    assert "Dropped incomplete checkpoint(s) at step 4" in second.stderr
    third = rl_kill.run_rlaif(tmp_path, [*args, "--resume"])
    assert third.returncode == 0, third.stderr[-2000:]
    assert "6 PPO steps" in third.stdout and "resumed at step 2, 4" in third.stdout
    rows = [json.loads(line) for line in (out / "ppo_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["episode"] for r in rows] == [2, 4, 6, 8, 10, 12]
    assert [r["lr"] for r in rows] == pytest.approx([1e-2 * (1 - k / 6) for k in range(6)])  # one schedule, whole run
    assert rl_kill.calls_by_process(tmp_path) == [4, 3, 2]
    assert (out / "policy" / "config.json").exists() and not (out / "checkpoints").exists()


@pytest.mark.skipif(PPO_TRL, reason="the ppo extra's TRL is installed here, so rlaif ppo runs")
def test_ppo_without_the_extra_says_so_in_one_line_before_importing_trl(prompts_file, policy_dir, tmp_path):
    code = ("import sys; from click.testing import CliRunner; from rlaif.cli import cli; "
            f"r = CliRunner().invoke(cli, ['ppo', '--prompts', {str(prompts_file)!r}, '--policy', {str(policy_dir)!r}, "
            f"'--output-dir', {str(tmp_path / 'o')!r}, '--reward-model', 'rm']); "
            "print(r.exit_code); print(r.output.strip()); print('trl' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    exit_code, message, trl_imported = done.stdout.strip().splitlines()
    assert exit_code == "1"
    assert message.startswith("Error: rlaif ppo needs the ppo extra") and "pip install 'rlaif[ppo]'" in message
    assert trl_imported == "False"
    assert not (tmp_path / "o").exists()


@needs_ppo_trl
def test_a_non_empty_output_dir_needs_resume_or_overwrite(prompts_file, policy_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = ["ppo", "--prompts", str(prompts_file), "--policy", str(policy_dir), "--output-dir", str(out),
            "--reward-model", "rm", "--batch-size", "2"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "is not empty: pass --overwrite" in result.output
    assert (out / "keep.txt").exists()
    both = CliRunner().invoke(cli, [*args, "--resume", "--overwrite"])
    assert both.exit_code == 1 and "contradict" in both.output


@needs_ppo_trl
def test_micro_batches_accumulate_gradients_over_the_batch(prompts_file, policy_dir, tmp_path):
    from rlaif.rl.ppo import trl_config

    args = trl_config(config(prompts_file, policy_dir, tmp_path, batch_size=4, micro_batch_size=1), steps_left=2)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (1, 4)
    assert args.local_rollout_forward_batch_size == 1 and args.total_episodes == 8
    result = run_ppo(config(prompts_file, policy_dir, tmp_path, batch_size=4, micro_batch_size=2), reward_fn=good_share)
    rows = [json.loads(line) for line in (tmp_path / "ppo_log.jsonl").read_text().splitlines()]
    assert result["steps"] == 2 and [row["episode"] for row in rows] == [4, 8]  # 4 prompts per update, as asked
