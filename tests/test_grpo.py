"""GRPO / RLOO on tiny local models: TRL gets the reward function's values, the policy learns, LoRA
needs no second model copy, bad input gets one line, and a SIGKILLed run resumes from its last
complete checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForSequenceClassification
from trl import GRPOTrainer, RLOOTrainer

import rl_kill
from rlaif.cli import cli
from rlaif.drlaif import DRLAIFScorer, ScoreConfig
from rlaif.errors import RlaifError
from rlaif.rl.grpo import GRPORunConfig, run_grpo
from rlaif.rl.reward_functions import PROMPT_TEXT, RewardSettings, import_reward_fn
from rlaif.rl.rewards import RewardModelFunction

PROMPTS = ["hello what is two plus two", "good or bad", "yes or no", "kind honest response"]
REWARD_CODE = '''
def good_words(prompts, completions, **kwargs):
    """'good' counts 1, every word 0.1, and a trace of the prompt so prompts matter too."""
    return [c.split().count("good") + 0.1 * len(c.split()) + 0.001 * len(p) for p, c in zip(prompts, completions)]

NOT_A_FUNCTION = 3

def wrong_signature(texts):
    return [0.0 for _ in texts]
'''


def good_words(prompts, completions, **kwargs):
    return [c.split().count("good") + 0.1 * len(c.split()) + 0.001 * len(p) for p, c in zip(prompts, completions)]


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """A real MODULE:FUNCTION on sys.path: `grpo_test_rewards:good_words`."""
    (tmp_path / "grpo_test_rewards.py").write_text(REWARD_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "grpo_test_rewards", raising=False)
    return "grpo_test_rewards"


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def config(prompts_file, policy, out, **kwargs) -> GRPORunConfig:
    base = dict(prompts=str(prompts_file), policy=str(policy), output_dir=str(out), steps=2, prompts_per_step=2,
                num_generations=4, completion_length=6, learning_rate=1e-2, save_steps=1, seed=3)
    return GRPORunConfig(**{**base, **kwargs})


def spy_rewards(monkeypatch, trainer=GRPOTrainer) -> list[dict]:
    """Record what every `_calculate_rewards` call got and returned (what TRL trains on)."""
    seen: list[dict] = []
    real = trainer._calculate_rewards

    def spy(self, inputs, prompts, completions, completion_ids_list):
        rewards = real(self, inputs, prompts, completions, completion_ids_list)
        seen.append({"prompts": list(prompts), "completions": list(completions),
                     "ids": [list(map(int, ids)) for ids in completion_ids_list],
                     "texts": [x[PROMPT_TEXT] for x in inputs], "rewards": rewards[:, 0].tolist(), "trainer": self,
                     "params": {n: (p.numel(), p.requires_grad) for n, p in self.model.named_parameters()}})
        return rewards

    monkeypatch.setattr(trainer, "_calculate_rewards", spy)
    return seen


def rows_of(out) -> list[dict]:
    return [json.loads(line) for line in (out / "grpo_log.jsonl").read_text().splitlines()]


def weights_changed(before_dir, after_dir) -> bool:
    before = AutoModelForCausalLM.from_pretrained(before_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(after_dir).state_dict()
    assert before.keys() == after.keys()
    return any(not torch.equal(before[k], after[k]) for k in before)


def test_trl_trains_on_the_functions_rewards_of_decoded_completions_and_the_policy_changes(
    prompts_file, tiny_model_dir, tmp_path, monkeypatch, reward_module
):
    seen = spy_rewards(monkeypatch)
    out = tmp_path / "run"
    result = run_grpo(config(prompts_file, tiny_model_dir, out, reward_fn=f"{reward_module}:good_words"))

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(seen) == 2  # one generation batch per step
    for call in seen:
        assert len(call["completions"]) == 2 * 4  # prompts_per_step x num_generations
        assert call["completions"] == tokenizer.batch_decode(call["ids"], skip_special_tokens=True)
        assert call["rewards"] == pytest.approx(good_words(call["prompts"], call["completions"]), abs=1e-6)
        # no chat template: the policy reads "Human: ... Assistant:" text; prompt_text keeps the user's prompt
        assert call["prompts"] == [f"Human: {text}\n\nAssistant:" for text in call["texts"]]
        assert set(call["texts"]) <= set(PROMPTS)
    rows = rows_of(out)
    assert [row["step"] for row in rows] == [1, 2]
    for row, call in zip(rows, seen, strict=True):
        assert row["reward_mean"] == pytest.approx(sum(call["rewards"]) / len(call["rewards"]), abs=1e-5)
    assert result["steps"] == 2 and result["reward_first"] == pytest.approx(rows[0]["reward_mean"])
    assert result["reference"] == "separate copy"  # beta 0.04, full fine-tuning: TRL loads a reference copy
    assert weights_changed(tiny_model_dir, out / "policy")
    card = (out / "policy" / "README.md").read_text()
    assert "GRPO" in card and f"{reward_module}:good_words" in card
    assert (out / "grpo_curve.png").stat().st_size > 1000
    assert not (out / "checkpoints").exists()  # a finished run keeps its policy, not its checkpoints


def test_d_rlaif_scores_are_the_rewards(prompts_file, tiny_model_dir, tmp_path, monkeypatch):
    seen = spy_rewards(monkeypatch)
    run_grpo(config(prompts_file, tiny_model_dir, tmp_path / "run", d_rlaif=True, feedback_model=tiny_model_dir,
                    steps=1))
    scorer = DRLAIFScorer(ScoreConfig(model=tiny_model_dir))
    (call,) = seen
    expected = scorer(prompts=call["texts"], completions=call["completions"])
    assert call["rewards"] == pytest.approx(expected, abs=1e-5)
    assert all(-1.0 <= r <= 1.0 for r in call["rewards"])
    assert len(set(round(r, 6) for r in call["rewards"])) > 1  # the feedback model tells completions apart


def test_lora_reference_is_the_adapter_disabled_base_not_a_second_copy(
    prompts_file, tiny_model_dir, tmp_path, monkeypatch, reward_module
):
    import trl.trainer.grpo_trainer as grpo_trainer

    copies = []  # every reference model TRL would build from a path
    real_create = grpo_trainer.create_model_from_path
    monkeypatch.setattr(grpo_trainer, "create_model_from_path",
                        lambda *a, **k: copies.append(a) or real_create(*a, **k))
    seen = spy_rewards(monkeypatch)
    out = tmp_path / "run"
    result = run_grpo(config(prompts_file, tiny_model_dir, out, reward_fn=f"{reward_module}:good_words",
                             lora_r=4, lora_alpha=8, beta=0.5, learning_rate=5e-2, steps=3))

    assert seen[0]["trainer"].ref_model is None and copies == []
    params = seen[0]["params"]  # the policy TRL trains: the base once, plus adapters
    trainable = {name for name, (_, grad) in params.items() if grad}
    assert trainable and all("lora_" in name for name in trainable)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert sum(n for name, (n, _) in params.items() if "lora_" not in name) == sum(p.numel() for p in base.parameters())
    kl = [row["kl"] for row in rows_of(out)]
    assert kl[0] == pytest.approx(0.0, abs=1e-7)  # step 1: adapters start at zero, so policy = base
    assert kl[2] > 1e-6  # the adapters moved and the reference did not: it is the base, adapters disabled
    assert result["reference"] == "adapter-disabled base"
    assert (out / "policy-adapter" / "adapter_config.json").exists()
    assert weights_changed(tiny_model_dir, out / "policy")  # the merged policy is a plain model directory


def test_rloo_with_a_reward_model_of_another_tokenizer(prompts_file, tiny_model_dir, tmp_path, monkeypatch):
    from conftest import make_tokenizer

    rm_dir = tmp_path / "rm"
    rm_tokenizer = make_tokenizer(["good", "bad", "yes", "no", "hello", "kind"])
    torch.manual_seed(1)
    rm_config = LlamaConfig(vocab_size=len(rm_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=0)
    LlamaForSequenceClassification(rm_config).save_pretrained(rm_dir)
    rm_tokenizer.save_pretrained(rm_dir)
    seen = spy_rewards(monkeypatch, RLOOTrainer)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "grpo", "--prompts", str(prompts_file), "--policy", tiny_model_dir, "--output-dir", str(out),
        "--reward-model", str(rm_dir), "--algorithm", "rloo", "--steps", "1", "--completion-length", "5",
    ])
    assert result.exit_code == 0, result.output
    assert "1 RLOO steps" in result.output
    (call,) = seen
    expected = RewardModelFunction(rm_dir)(call["texts"], call["completions"])  # prompt as written, RM's own tokens
    assert call["rewards"] == pytest.approx(expected, abs=1e-5)
    assert json.loads((out / "grpo_log.jsonl.meta.json").read_text())["config"]["algorithm"] == "rloo"


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "Give exactly one reward: --reward-model DIR, --d-rlaif or --reward-fn"),
        (["--reward-model", "rm", "--d-rlaif"], "(got --reward-model and --d-rlaif)"),
        (["--reward-fn", "grpo_test_rewards"], "must be MODULE:FUNCTION"),
        (["--reward-fn", "no_such_module_xyz:f"], "no module named 'no_such_module_xyz'"),
        (["--reward-fn", "grpo_test_rewards:missing"], "has no 'missing'"),
        (["--reward-fn", "grpo_test_rewards:NOT_A_FUNCTION"], "is of type int, not a function"),
        (["--reward-fn", "grpo_test_rewards:wrong_signature"], "must accept prompts= and completions="),
        (["--reward-fn", "grpo_test_rewards:good_words", "--algorithm", "rloo", "--loss", "grpo"], "are GRPO's"),
        (["--reward-fn", "grpo_test_rewards:good_words", "--prompts-per-step", "5"], "fewer than the 5 one step"),
        (["--reward-fn", "grpo_test_rewards:good_words", "--resume", "--overwrite"], "contradict"),
    ],
)
def test_bad_input_gets_one_line(prompts_file, tiny_model_dir, tmp_path, reward_module, extra, message):
    args = ["grpo", "--prompts", str(prompts_file), "--policy", tiny_model_dir, "--output-dir", str(tmp_path / "o")]
    result = CliRunner().invoke(cli, args + extra)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output


def test_a_non_empty_output_dir_needs_resume_or_overwrite(prompts_file, tiny_model_dir, tmp_path, reward_module):
    out = tmp_path / "o"
    out.mkdir()
    (out / "something").write_text("x")
    args = ["grpo", "--prompts", str(prompts_file), "--policy", tiny_model_dir, "--output-dir", str(out),
            "--reward-fn", f"{reward_module}:good_words", "--steps", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "is not empty: pass --overwrite" in result.output
    assert (out / "something").exists()
    result = CliRunner().invoke(cli, args + ["--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (out / "something").exists() and (out / "policy" / "config.json").exists()
    again = CliRunner().invoke(cli, args + ["--resume"])  # finished: nothing to redo
    assert again.exit_code == 0 and "already complete" in again.output
    changed = CliRunner().invoke(cli, [*args[:-1], "2", "--resume"])
    assert changed.exit_code == 1 and "other settings" in changed.output


def test_reward_settings_and_imports_are_checked_without_a_trainer(reward_module):
    assert import_reward_fn(f"{reward_module}:good_words")(prompts=["p"], completions=["good good"]) == pytest.approx([2.201])
    with pytest.raises(RlaifError, match="applies to --d-rlaif only"):
        RewardSettings(reward_fn="m:f", feedback_backend_option=("dtype=float32",)).check_reward()


def test_sigkilled_run_resumes_from_its_last_complete_checkpoint(prompts_file, tiny_model_dir, tmp_path):
    """Kill 1 dies while saving checkpoint 4 (files written, marker not): the resume falls back to 2.
    Kill 2 dies scoring step 5 (checkpoint 4 complete by then): the resume runs steps 5 and 6 only."""
    rl_kill.write_helpers(tmp_path)
    out = tmp_path / "run"
    args = ["grpo", "--prompts", str(prompts_file), "--policy", tiny_model_dir, "--output-dir", str(out),
            "--reward-fn", "kill_reward:reward", "--steps", "6", "--save-steps", "2", "--completion-length", "5",
            "--learning-rate", "1e-2"]
    first = rl_kill.run_rlaif(tmp_path, args, kill_at_save=4)
    assert first.returncode == -9, first.stderr[-2000:]
    assert rl_kill.logged_steps(out / "grpo_log.jsonl") == [1, 2, 3, 4]
    assert (out / "checkpoints" / "checkpoint-4").is_dir()  # there, but never marked complete

    second = rl_kill.run_rlaif(tmp_path, [*args, "--resume"], kill_at_call=3)  # falls back to 2: steps 3, 4, 5
    assert second.returncode == -9, second.stderr[-2000:]
    assert "Dropped incomplete checkpoint(s) at step 4" in second.stderr
    assert rl_kill.logged_steps(out / "grpo_log.jsonl") == [1, 2, 3, 4]  # 3 and 4 again, 5 never finished

    third = rl_kill.run_rlaif(tmp_path, [*args, "--resume"])
    assert third.returncode == 0, third.stderr[-2000:]
    assert "6 GRPO steps" in third.stdout and "resumed at step 2, 4" in third.stdout
    assert rl_kill.logged_steps(out / "grpo_log.jsonl") == [1, 2, 3, 4, 5, 6]
    assert rl_kill.calls_by_process(tmp_path) == [4, 3, 2]  # steps 1-4, 3-5, 5-6: each step after a checkpoint
    meta = json.loads((out / "grpo_log.jsonl.meta.json").read_text())
    assert meta["status"] == "done" and meta["result"]["steps"] == 6 and meta["resumed_from"] == [2, 4]
    assert (out / "policy" / "config.json").exists()
