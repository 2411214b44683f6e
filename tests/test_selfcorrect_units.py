"""Self-correction pieces by hand: GSM8K answers, the five metrics, SCoRe's advantages and KL weights, the bridge."""

from __future__ import annotations

import math
from copy import deepcopy

import pytest
import torch

from rlaif.errors import RlaifError
from rlaif.selfcorrect.advantages import attempt_advantages, attempt_kl_weights, leave_one_out, token_tensors
from rlaif.selfcorrect.gsm8k import exact_match_reward, gold_answer, is_correct, predicted_answer, read_problems
from rlaif.selfcorrect.metrics import format_table, self_correction_metrics
from rlaif.selfcorrect.prompts import (MATH_INSTRUCTION, PLAIN_BRIDGE, AttemptIds, chat_bridge, cut_at_turn,
                                       first_prompt, resolve_instruction, INSTRUCTIONS)
from rlaif.selfcorrect.trainer import PerTokenBeta

# -- GSM8K answers --------------------------------------------------------------------------------------------


def test_gold_is_the_number_after_the_marks():
    assert gold_answer("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == "72"
    assert gold_answer("... #### 1,000") == "1000"
    assert gold_answer("#### -3.5") == "-3.5"
    assert gold_answer("42") == "42"  # a prompt/answer file with the bare number
    with pytest.raises(RlaifError, match="holds no number"):
        gold_answer("#### none")


def test_prediction_prefers_the_final_answer_phrase_then_the_last_number():
    text = "She has 5 + 3 = 8 apples.\nFinal Answer: The final answer is $8$. I hope it is correct. 12"
    assert predicted_answer(text) == "8"  # not the trailing 12
    assert predicted_answer("5 + 3 = 8, so 1,200 in total") == "1200"
    assert predicted_answer("the final answer is unclear, maybe 7") == "7"  # the first number after the phrase
    assert predicted_answer("no digits here") is None
    assert is_correct("The final answer is 18.00.", "18")
    assert not is_correct("The final answer is 19.", "18")
    assert not is_correct("nothing", "18")


def test_exact_match_reward_reads_the_answer_column():
    completions = ["The final answer is 72.", [{"role": "assistant", "content": "so 10"}], "3"]
    assert exact_match_reward(["p"] * 3, completions, answer=["#### 72", "10", "4"]) == [1.0, 1.0, 0.0]
    with pytest.raises(RlaifError, match="answer"):
        exact_match_reward(["p"], ["1"])


def test_read_problems_takes_gsm8k_and_prompt_answer_files(tmp_path):
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text('{"question": "q1", "answer": "a\\n#### 3"}\n{"question": "q2", "answer": "#### 1,024"}\n')
    assert [(p["question"], p["gold"]) for p in read_problems(str(gsm))] == [("q1", "3"), ("q2", "1024")]
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"prompt": "what?", "answer": "7"}\n')
    assert read_problems(str(plain))[0]["question"] == "what?"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### x"}\n')
    with pytest.raises(RlaifError, match="record 1"):
        read_problems(str(bad))


# -- the five metrics -----------------------------------------------------------------------------------------


def test_metrics_on_hand_made_arrays():
    c1 = [1, 0, 1, 0, 0]
    c2 = [1, 1, 0, 1, 0]  # right→right, wrong→right, right→wrong, wrong→right, wrong→wrong
    report = self_correction_metrics(c1, c2, n_boot=200, seed=0)
    assert report["n"] == 5
    assert report["accuracy_t1"] == pytest.approx(0.4)
    assert report["accuracy_t2"] == pytest.approx(0.6)
    assert report["delta"] == pytest.approx(0.2)
    assert report["delta_i_to_c"] == pytest.approx(0.4)
    assert report["delta_c_to_i"] == pytest.approx(0.2)
    assert report["delta"] == pytest.approx(report["delta_i_to_c"] - report["delta_c_to_i"])
    assert report["counts"] == {"right_right": 1, "wrong_right": 2, "right_wrong": 1, "wrong_wrong": 1}
    for key in ("accuracy_t1", "accuracy_t2", "delta", "delta_i_to_c", "delta_c_to_i"):
        low, high = report["ci95"][key]
        assert low <= report[key] <= high and low < high
    assert "Δ^{i→c}" in format_table(report)


def test_metrics_intervals_collapse_when_every_problem_agrees():
    report = self_correction_metrics([0, 0, 0], [1, 1, 1], n_boot=50)
    assert report["delta"] == 1.0 and report["ci95"]["delta"] == [1.0, 1.0]
    assert report["delta_c_to_i"] == 0.0 and report["ci95"]["delta_c_to_i"] == [0.0, 0.0]


# -- SCoRe's advantages and KL weights ------------------------------------------------------------------------


def test_leave_one_out_by_hand():
    assert leave_one_out(torch.tensor([1.0, 0.0, 0.0]), 3).tolist() == pytest.approx([1.0, -0.5, -0.5])
    assert leave_one_out(torch.tensor([1.0, 0.0, 3.0, 3.0]), 2).tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0])
    with pytest.raises(ValueError):
        leave_one_out(torch.tensor([1.0, 2.0]), 1)


def test_stage_advantages_k2_swapped_rewards_alpha_10():
    # rollout 1: (r1, r2) = (1, 0); rollout 2: (0, 1); one problem, k = 2, alpha = 10
    r1, r2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    a1, a2 = attempt_advantages(r1, r2, k=2, stage=1, alpha=10.0)
    assert a1.tolist() == [0.0, 0.0]  # stage I: no reward term on attempt 1
    assert a2.tolist() == [-1.0, 1.0]  # r2 minus the other rollout's r2
    a1, a2 = attempt_advantages(r1, r2, k=2, stage=2, alpha=10.0)
    assert a1.tolist() == [1.0, -1.0]  # attempt 1 gets its own reward only
    # shaped r2 + 10 (r2 - r1) = (-10, 11): advantages -10 - 11 and 11 - (-10)
    assert a2.tolist() == [-21.0, 21.0]
    assert attempt_kl_weights(1, 0.01, 0.1) == (0.1, 0.01)
    assert attempt_kl_weights(2, 0.01, 0.1) == (0.01, 0.01)


def test_token_tensors_put_each_attempts_values_on_its_tokens_only():
    advantages, weights = token_tensors([(2, 3, 1), (1, 1, 2)], 7, torch.tensor([0.5, -1.0]),
                                        torch.tensor([2.0, 3.0]), kl1=0.1, kl2=0.01)
    assert advantages.tolist() == [[0.5, 0.5, 0, 0, 0, 2.0, 0], [-1.0, 0, 3.0, 3.0, 0, 0, 0]]
    expected = torch.tensor([[0.1, 0.1, 0, 0, 0, 0.01, 0], [0.1, 0, 0.01, 0.01, 0, 0, 0]])
    assert torch.allclose(weights, expected)
    with pytest.raises(ValueError, match="exceed"):
        token_tensors([(5, 2, 1)], 7, torch.tensor([0.0]), torch.tensor([0.0]), 0.1, 0.1)


def test_per_token_beta_weights_the_kl_product_and_reads_as_nonzero():
    weights = torch.tensor([[0.1, 0.0, 0.01]])
    beta = PerTokenBeta(weights)
    kl = torch.tensor([[2.0, 5.0, 3.0]])
    assert torch.allclose(beta * kl, torch.tensor([[0.2, 0.0, 0.03]]))
    assert beta != 0.0 and float(beta) == 1.0


# -- prompts --------------------------------------------------------------------------------------------------

GEMMA_LIKE = ("{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
              "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
              "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def test_paper_instruction_and_presets():
    assert MATH_INSTRUCTION.startswith("There might be an error in the solution above because of lack of "
                                       "understanding of the question. Please correct the error, if any, and rewrite "
                                       "the solution. Only output the final solution!")
    assert MATH_INSTRUCTION.endswith('"Final Answer: The final answer is $answer$. I hope it is correct."')
    assert resolve_instruction("constitution", INSTRUCTIONS, "--instruction") == INSTRUCTIONS["constitution"]
    assert resolve_instruction("Check it.", INSTRUCTIONS, "--instruction") == "Check it."
    with pytest.raises(RlaifError, match="empty"):
        resolve_instruction("  ", INSTRUCTIONS, "--instruction")
    assert first_prompt("2+2?", "") == "2+2?"


def test_chat_bridge_is_read_off_the_template(tiny_tokenizer):
    tok = deepcopy(tiny_tokenizer)  # the session tokenizer stays without a chat template
    tok.chat_template = GEMMA_LIKE
    bridge = chat_bridge(tok)
    assert bridge.before == "<end_of_turn>\n<start_of_turn>user\n"
    assert bridge.after == "<end_of_turn>\n<start_of_turn>model\n"
    # a template that renders a longer chat differently from the start: the second prompt cannot extend the first
    tok.chat_template = "{% if messages|length > 1 %}[chat]{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(RlaifError, match="prompt-format plain"):
        chat_bridge(tok)
    assert PLAIN_BRIDGE.text("Fix it.") == "\n\nHuman: Fix it.\n\nAssistant:"


def test_attempt_ids_bridge_and_plain_cut(tiny_tokenizer):
    ids = AttemptIds(tiny_tokenizer, "plain", "good ?", eos_ids=[2])
    assert ids.bridge_ids == tiny_tokenizer.encode("\n\nHuman: good ?\n\nAssistant:", add_special_tokens=False)
    assert ids.bridge_after([5, 6]) == ids.bridge_ids
    eos_first = AttemptIds(tiny_tokenizer, "plain", "good ?", eos_ids=[ids.bridge_ids[0]])
    assert eos_first.bridge_after([5, ids.bridge_ids[0]]) == ids.bridge_ids[1:]  # its own end token is not repeated
    assert cut_at_turn(" 4 apples.\nHuman: more?") == " 4 apples."


def test_plain_trim_keeps_the_tokens_before_a_new_turn():
    class CharTokenizer:  # one token a character, so the cut point is exact
        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

        def decode(self, ids, skip_special_tokens=False):
            return "".join(chr(i) for i in ids)

    ids = AttemptIds(CharTokenizer(), "plain", "redo", eos_ids=[])
    text = " it is 4.\nHuman: and?"
    assert ids.trim([ord(c) for c in text]) == len(" it is 4.")
    assert ids.trim([ord(c) for c in " it is 4."]) == len(" it is 4.")
    assert math.isclose(len(ids.bridge_ids), len("\n\nHuman: redo\n\nAssistant:"))


# -- the training config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(stage1_steps=0, stage2_steps=0), "not both 0"),
    (dict(num_generations=1), "leave-one-out"),
    (dict(alpha=-1.0), "alpha"),
    (dict(reward_model="rm", d_rlaif=True), "exactly one reward"),
    (dict(instruction=" "), "--instruction is empty"),
    (dict(prompt_format="html"), "--prompt-format"),
])
def test_training_config_errors_name_the_fix(overrides, message):
    from rlaif.selfcorrect.train import SelfCorrectTrainConfig

    config = SelfCorrectTrainConfig(problems="p.jsonl", policy="m", output_dir="o", **overrides)
    with pytest.raises(RlaifError, match=message):
        config.validate()


def test_training_config_defaults_are_the_papers():
    from rlaif.selfcorrect.prompts import CONSTITUTION_INSTRUCTION, MATH_FIRST
    from rlaif.selfcorrect.train import SelfCorrectTrainConfig

    config = SelfCorrectTrainConfig(problems="p.jsonl", policy="m", output_dir="o")
    assert (config.alpha, config.beta1, config.beta2, config.temperature) == (10.0, 0.01, 0.1, 1.0)
    assert config.beta == 0.1 and config.loss == "dr_grpo" and config.steps == 20
    assert config.instructions() == (MATH_INSTRUCTION, MATH_FIRST)  # exact match: the paper's math prompts
    soft = SelfCorrectTrainConfig(problems="p.jsonl", policy="m", output_dir="o", d_rlaif=True)
    assert soft.instructions() == (CONSTITUTION_INSTRUCTION, "")
