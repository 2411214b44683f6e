"""SCoRe on TRL, on tiny Llamas: what attempt 2 reads, the gradient against Eq. 3 / Eq. 4 written out, both stages end to end."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from conftest import WORDS, make_tokenizer, save_tiny_llama
from rlaif.cli import cli
from rlaif.io import read_jsonl
from rlaif.selfcorrect import report
from rlaif.selfcorrect.gsm8k import read_problems
from rlaif.selfcorrect.train import (SelfCorrectTrainConfig, build_dataset, build_trainer, resolve_reward,
                                     train_self_correct)

INSTRUCTION = "what is the answer ?"
GEMMA_LIKE = ("{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
              "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
              "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")


@pytest.fixture
def problems(tmp_path) -> str:
    path = tmp_path / "problems.jsonl"
    rows = [("what is two plus two ?", "#### 4"), ("what is four plus four ?", "#### 8"),
            ("what is two plus four ?", "#### 6"), ("hello what is one plus one ?", "#### 2")]
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
    return str(path)


def config(problems: str, policy: str, out: Path, **overrides) -> SelfCorrectTrainConfig:
    values = dict(problems=problems, policy=policy, output_dir=str(out), stage1_steps=1, stage2_steps=1,
                  prompts_per_step=2, num_generations=2, completion_length=6, gradient_checkpointing=False,
                  instruction=INSTRUCTION, first_instruction="none", learning_rate=1e-3, save_steps=1, seed=0)
    return SelfCorrectTrainConfig(**{**values, **overrides})


def hashed_reward(prompts, completions, **kwargs) -> list[float]:
    """A fixed 0/1 reward of the text (so rewards vary between rollouts, the same text always the same)."""
    return [float(hashlib.md5(str(c).encode()).digest()[0] % 2) for c in completions]


def trainer_for(cfg: SelfCorrectTrainConfig, model=None, **overrides):
    tokenizer = AutoTokenizer.from_pretrained(cfg.policy)
    tokenizer.padding_side = "left"
    dataset, longest = build_dataset(cfg, read_problems(cfg.problems), tokenizer)
    model = model or AutoModelForCausalLM.from_pretrained(cfg.policy)
    reward = resolve_reward(cfg, hashed_reward)
    return build_trainer(cfg, model, tokenizer, dataset, longest, reward, Path(cfg.output_dir) / "ckpt",
                         save_strategy="no", **overrides), tokenizer


def spy_generation(trainer) -> tuple[list, list]:
    """Record every generation call (prompt ids, n, completions) and every scored batch."""
    calls, batches = [], []
    generate, score = trainer._generate_single_turn, trainer._generate_and_score_completions

    def generate_spy(prompt_ids, images, fields, n, **kw):
        ids, logprobs = generate(prompt_ids, images, fields, n, **kw)
        calls.append(([list(p) for p in prompt_ids], n, [list(c) for c in ids]))
        return ids, logprobs

    def score_spy(inputs):
        out = score(inputs)
        batches.append(out)
        return out

    trainer._generate_single_turn, trainer._generate_and_score_completions = generate_spy, score_spy
    return calls, batches


def check_conditioning(calls, batches, bridge_text: str, tokenizer, eos_ids: set[int]) -> None:
    (first_prompts, k, firsts), (second_prompts, n2, seconds) = calls[0], calls[1]
    assert k == 2 and n2 == 1  # attempt 1: k per problem; attempt 2: one each (its prompts are all distinct)
    bridge = tokenizer.encode(bridge_text, add_special_tokens=False)
    batch = batches[0]
    for row, (x, y1, x2, y2) in enumerate(zip(first_prompts, firsts, second_prompts, seconds)):
        own_end = bool(y1) and y1[-1] in eos_ids and y1[-1] == bridge[0]
        expected_bridge = bridge[1:] if own_end else bridge
        assert x2 == x + y1 + expected_bridge  # exactly x ⊕ y1 ⊕ bridge, y1 as sampled (never re-tokenised)
        width = len(y1) + len(expected_bridge) + len(y2)
        assert batch["completion_ids"][row, :width].tolist() == y1 + expected_bridge + y2
        mask = batch["tool_mask"][row, :width].tolist()
        assert mask == [1] * len(y1) + [0] * len(expected_bridge) + [1] * len(y2)  # the bridge is not trained


def test_attempt_two_reads_x_then_y1_then_the_plain_bridge(problems, tiny_model_dir, tmp_path):
    trainer, tokenizer = trainer_for(config(problems, tiny_model_dir, tmp_path / "run", stage2_steps=0))
    calls, batches = spy_generation(trainer)
    trainer.train()
    check_conditioning(calls, batches, f"\n\nHuman: {INSTRUCTION}\n\nAssistant:", tokenizer, set(trainer.eos_token_ids))


def test_attempt_two_reads_the_chat_templates_bridge(problems, tmp_path):
    tokenizer = make_tokenizer([*WORDS, "user", "model"])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tokenizer.chat_template = GEMMA_LIKE
    policy = save_tiny_llama(tmp_path / "chat-llama", tokenizer)
    trainer, tok = trainer_for(config(problems, str(policy), tmp_path / "run", stage2_steps=0))
    calls, batches = spy_generation(trainer)
    trainer.train()
    expected = f"<end_of_turn>\n<start_of_turn>user\n{INSTRUCTION}<end_of_turn>\n<start_of_turn>model\n"
    check_conditioning(calls, batches, expected, tok, set(trainer.eos_token_ids))
    rendered = [tok.encode(f"<start_of_turn>user\n{p['question']}<end_of_turn>\n<start_of_turn>model\n",
                           add_special_tokens=False) for p in read_problems(problems)]
    assert all(x in rendered for x in calls[0][0])  # attempt 1 reads the chat-rendered problem


# -- the gradient, against Eq. 3 / Eq. 4 written out independently ------------------------------------------


class GrabGradients(TrainerCallback):
    """The unclipped gradients and the parameters just before the optimiser's first step."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        self.params = {n: p.detach().clone() for n, p in model.named_parameters()}


def token_logps(model, seq: list[int]) -> torch.Tensor:
    logits = model(input_ids=torch.tensor([seq])).logits[0].float()
    return torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(seq[1:])[:, None])[:, 0]


def loo(values: list[float], i: int, k: int) -> float:
    start = (i // k) * k
    others = [values[j] for j in range(start, start + k) if j != i]
    return values[i] - sum(others) / len(others)


def objective_gradient(policy_dir: str, params: dict, rollout: list[dict], r1: list[float], r2: list[float], k: int,
                       stage: int, alpha: float, beta1: float, beta2: float, width: int, bonus_on_y1: bool = False):
    """Autograd of the sample estimate of Eq. 3 (stage 1) or Eq. 4 (stage 2), scaled by 1 / (N · L).

    Per rollout i, J_i = Σ_{t∈y1} [a1_i log π_t − w1 sg(log π_t − log π_ref,t) log π_t]
                       + Σ_{t∈y2} [a2_i log π_t − w2 sg(log π_t − log π_ref,t) log π_t],
    the score-function form of r(y) − β KL(π ‖ π_ref) per token; the bridge gets nothing.
    """
    policy = AutoModelForCausalLM.from_pretrained(policy_dir)
    policy.load_state_dict(params)
    reference = AutoModelForCausalLM.from_pretrained(policy_dir)
    shaped = [b + alpha * (b - a) for a, b in zip(r1, r2)]
    total = torch.zeros(())
    for i, row in enumerate(rollout):
        x, y1, bridge, y2 = row["prompt_ids"], row["attempt1_ids"], row["bridge_ids"], row["attempt2_ids"]
        seq = x + y1 + bridge + y2
        logp = token_logps(policy, seq)
        with torch.no_grad():
            ref = token_logps(reference, seq)
        first = slice(len(x) - 1, len(x) - 1 + len(y1))
        second = slice(len(x) + len(y1) + len(bridge) - 1, len(seq) - 1)
        if stage == 1:
            a1, a2, w1, w2 = 0.0, loo(r2, i, k), beta2, beta1
        else:
            a1, a2, w1, w2 = loo(shaped if bonus_on_y1 else r1, i, k), loo(shaped, i, k), beta1, beta1
        for part, advantage, weight in ((first, a1, w1), (second, a2, w2)):
            total = total + (advantage * logp[part] - weight * (logp[part] - ref[part]).detach() * logp[part]).sum()
    (-total / (len(rollout) * width)).backward()
    return {n: p.grad for n, p in policy.named_parameters()}


def max_relative_difference(a: dict, b: dict) -> float:
    scale = max(v.abs().max().item() for v in b.values())
    return max((a[n] - b[n]).abs().max().item() for n in b) / scale


@pytest.mark.parametrize("stage", [1, 2])
def test_trainer_gradient_is_autograd_of_the_stage_objective(stage, problems, tiny_model_dir, tmp_path):
    k, alpha, beta1, beta2 = 3, 10.0, 0.05, 0.5
    cfg = config(problems, tiny_model_dir, tmp_path / "run", stage1_steps=1 if stage == 1 else 0,
                 stage2_steps=0 if stage == 1 else 1, num_generations=k, alpha=alpha, beta1=beta1, beta2=beta2)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move the policy off its reference, so the KL term has a gradient
        for p in policy.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=noise))
    grab = GrabGradients()
    trainer, tokenizer = trainer_for(cfg, policy, max_grad_norm=0.0, callbacks=[grab])
    trainer.train()
    rollout = trainer.score_rollout
    texts = [[tokenizer.decode(r[key], skip_special_tokens=True).strip() for r in rollout]
             for key in ("attempt1_ids", "attempt2_ids")]
    r1, r2 = hashed_reward(None, texts[0]), hashed_reward(None, texts[1])
    assert any(loo(r2, i, k) for i in range(len(r2)))  # a real policy-gradient signal, not only the KL term
    expected = objective_gradient(tiny_model_dir, grab.params, rollout, r1, r2, k, stage, alpha, beta1, beta2,
                                  cfg.completion_length)
    assert max_relative_difference(grab.grads, expected) < 1e-4
    # the test tells objectives apart: swapped KL weights (stage I) or the bonus on y1 too (stage II) differ
    wrong = (objective_gradient(tiny_model_dir, grab.params, rollout, r1, r2, k, stage, alpha, beta2, beta1,
                                cfg.completion_length) if stage == 1 else
             objective_gradient(tiny_model_dir, grab.params, rollout, r1, r2, k, stage, alpha, beta1, beta2,
                                cfg.completion_length, bonus_on_y1=True))
    assert max_relative_difference(grab.grads, wrong) > 1e-2


# -- both stages end to end (CLI), resume and the evaluation of the result ----------------------------------


def test_train_self_correct_runs_both_stages_with_lora(problems, tiny_model_dir, tmp_path):
    out = tmp_path / "score"
    args = ["train-self-correct", "--problems", problems, "--policy", tiny_model_dir, "--output-dir", str(out),
            "--stage1-steps", "1", "--stage2-steps", "2", "--prompts-per-step", "2", "--num-generations", "2",
            "--completion-length", "6", "--no-gradient-checkpointing", "--lora-r", "2", "--learning-rate", "1e-3",
            "--instruction", INSTRUCTION, "--first-instruction", "none", "--save-steps", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "3 SCoRe steps" in result.output and "Stage II" in result.output
    rows = list(read_jsonl(out / "score_log.jsonl"))
    assert [(r["step"], r["stage"]) for r in rows] == [(1, 1), (2, 2), (3, 2)]
    for row in rows:
        assert 0.0 <= row["reward_attempt1"] <= 1.0 and 0.0 <= row["reward_attempt2"] <= 1.0
        assert row["delta"] == pytest.approx(row["reward_attempt2"] - row["reward_attempt1"])
        assert row["kl"] is not None and row["kl"] >= 0.0
    AutoModelForCausalLM.from_pretrained(out / "policy")  # a plain model directory, LoRA merged
    assert (out / "policy-adapter" / "adapter_config.json").exists()
    card = (out / "policy" / "README.md").read_text()
    assert "Stage I (1 steps)" in card and "Stage II (2 steps)" in card and "GSM8K exact match" in card
    assert f'"{INSTRUCTION}"' in card
    assert (out / "score_curve.png").stat().st_size > 0
    assert not (out / "checkpoints").exists()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "--resume" in again.output and "--overwrite" in again.output
    done = CliRunner().invoke(cli, [*args, "--resume"])
    assert done.exit_code == 0 and "already complete" in done.output

    evaluated = CliRunner().invoke(cli, ["self-correct", "--model", str(out / "policy"), "--problems", problems,
                                         "--out", str(tmp_path / "eval"), "--max-new-tokens", "4", "--instruction",
                                         INSTRUCTION, "--first-instruction", "none", "--n-boot", "50", "--no-cache"])
    assert evaluated.exit_code == 0, evaluated.output
    figures = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert figures["n"] == 4
    assert figures["delta"] == pytest.approx(figures["delta_i_to_c"] - figures["delta_c_to_i"])
    assert len(list(read_jsonl(tmp_path / "eval" / "attempts.jsonl"))) == 4


def test_a_run_interrupted_in_stage_one_resumes_into_stage_two(problems, tiny_model_dir, tmp_path, monkeypatch):
    cfg = config(problems, tiny_model_dir, tmp_path / "run", stage1_steps=1, stage2_steps=1)
    row_of = report.score_row

    def interrupt_at_step_two(logs):
        if logs.get("score/stage") == 2.0:
            raise KeyboardInterrupt  # a kill after step 1's checkpoint, before step 2 is logged
        return row_of(logs)

    monkeypatch.setattr(report, "score_row", interrupt_at_step_two)
    with pytest.raises(KeyboardInterrupt):
        train_self_correct(cfg, reward_fn=hashed_reward)
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "score_log.jsonl")] == [1]
    monkeypatch.setattr(report, "score_row", row_of)
    result = train_self_correct(cfg, reward_fn=hashed_reward, resume=True)
    rows = list(read_jsonl(tmp_path / "run" / "score_log.jsonl"))
    assert [(r["step"], r["stage"]) for r in rows] == [(1, 1), (2, 2)]
    assert result["resumed_from"] == [1]
    base, trained = (AutoModelForCausalLM.from_pretrained(p) for p in (tiny_model_dir, tmp_path / "run" / "policy"))
    assert any(not torch.equal(a, b) for a, b in zip(base.parameters(), trained.parameters()))  # it learned


def test_d_rlaif_scores_each_attempt_against_the_original_prompt(problems, tiny_model_dir, tmp_path, monkeypatch):
    from rlaif.drlaif import DRLAIFScorer, ScoreConfig
    from rlaif.selfcorrect.prompts import CONSTITUTION_INSTRUCTION
    from rlaif.selfcorrect.trainer import AttemptReward

    seen = []
    call = AttemptReward.__call__

    def spy(self, prompts, completions, **kwargs):
        rewards = call(self, prompts, completions, **kwargs)
        seen.append((self.attempt, list(kwargs["prompt_text"]), list(kwargs[self.key]), rewards))
        return rewards

    monkeypatch.setattr(AttemptReward, "__call__", spy)
    cfg = config(problems, tiny_model_dir, tmp_path / "run", stage2_steps=0, d_rlaif=True,
                 feedback_model=tiny_model_dir, instruction="auto", first_instruction="auto")
    assert cfg.instructions() == (CONSTITUTION_INSTRUCTION, "")  # AI feedback: the constitutional instruction
    train_self_correct(cfg)
    scorer = DRLAIFScorer(ScoreConfig(model=tiny_model_dir, no_cache=True))
    assert [attempt for attempt, *_ in seen] == [1, 2]
    for _, prompts, texts, rewards in seen:
        assert prompts[0] in {p["question"] for p in read_problems(problems)}  # the judge reads x, not x ⊕ y1
        assert rewards == pytest.approx(scorer(prompts=prompts, completions=texts), abs=1e-5)
        assert all(-1.0 <= r <= 1.0 for r in rewards)
