"""`rlaif self-correct`: exact two-attempt prompts and metrics with a scripted model, resume, the CLI on a tiny Llama."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from rlaif.cli import cli
from rlaif.errors import RlaifError
from rlaif.io import read_jsonl
from rlaif.selfcorrect.evaluate import SelfCorrectConfig, evaluate_self_correction
from rlaif.selfcorrect.prompts import MATH_FIRST, MATH_INSTRUCTION, PLAIN_STOPS

FIRST = {"1": "1", "2": "9", "3": "3", "4": "9", "5": "9"}  # right, wrong, right, wrong, wrong
SECOND = {"1": "1", "2": "2", "3": "9", "4": "4", "5": "9"}  # right, right, wrong, right, wrong
PROBLEMS = [{"id": f"p{i}", "question": f"How many apples are in box {i}?", "answer": f"#### {i}", "gold": str(i)}
            for i in range(1, 6)]


class ScriptedModel:
    """A back end that answers attempt 1 from FIRST and attempt 2 (its prompt holds the instruction) from SECOND."""

    model_id = "scripted-model"
    context_length = None

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.prompts: list[str] = []
        self.settings: list = []

    def generate(self, prompts, settings):
        self.prompts.extend(prompts)
        self.settings.extend(settings)
        out = []
        for prompt in prompts:
            box = re.findall(r"box (\d)", prompt)[0]
            second = MATH_INSTRUCTION in prompt
            answer = (SECOND if second else FIRST)[box]
            out.append(f" So it is {answer}. The final answer is {answer}.\nHuman: another turn")
        return out

    def token_logprobs(self, requests):
        raise AssertionError("self-correct only generates")


def cfg(**overrides) -> SelfCorrectConfig:
    return SelfCorrectConfig(**{"model": "scripted", "n_boot": 200, "no_cache": True, **overrides})


def test_two_attempt_prompts_and_the_five_metrics(tiny_tokenizer, tmp_path):
    model = ScriptedModel(tiny_tokenizer)
    report = evaluate_self_correction(PROBLEMS, cfg(), tmp_path / "out", backend=model, progress=False)
    first = f"Human: {MATH_FIRST}\n\nProblem: How many apples are in box 1?\n\nAssistant:"
    assert model.prompts[0] == first
    # attempt 2 reads chat(x) + y1 (cut where the model started a new turn) + bridge + instruction
    assert model.prompts[5] == first + " So it is 1. The final answer is 1." + f"\n\nHuman: {MATH_INSTRUCTION}\n\nAssistant:"
    assert all(s.temperature == 0.0 and s.stop == PLAIN_STOPS for s in model.settings)  # greedy, stop at a new turn
    assert report["n"] == 5
    assert report["accuracy_t1"] == pytest.approx(0.4) and report["accuracy_t2"] == pytest.approx(0.6)
    assert report["delta"] == pytest.approx(0.2)
    assert report["delta_i_to_c"] == pytest.approx(0.4) and report["delta_c_to_i"] == pytest.approx(0.2)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {k: saved[k] for k in ("n", "accuracy_t1", "accuracy_t2", "delta", "delta_i_to_c", "delta_c_to_i")} == {
        "n": 5, "accuracy_t1": pytest.approx(0.4), "accuracy_t2": pytest.approx(0.6), "delta": pytest.approx(0.2),
        "delta_i_to_c": pytest.approx(0.4), "delta_c_to_i": pytest.approx(0.2)}
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "attempts.jsonl")}
    assert rows["p2"]["attempt1"] == "So it is 9. The final answer is 9." and rows["p2"]["answer2"] == "2"
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| Accuracy@t1 | 0.400 |" in markdown and "p2 (wrong → right" in markdown and "p3 (right → wrong" in markdown


def test_resume_generates_only_the_new_problems_and_an_earlier_run_is_kept(tiny_tokenizer, tmp_path):
    out = tmp_path / "out"
    evaluate_self_correction(PROBLEMS[:3], cfg(), out, backend=ScriptedModel(tiny_tokenizer), progress=False)
    with pytest.raises(RlaifError, match="--resume"):
        evaluate_self_correction(PROBLEMS, cfg(), out, backend=ScriptedModel(tiny_tokenizer), progress=False)
    model = ScriptedModel(tiny_tokenizer)
    report = evaluate_self_correction(PROBLEMS, cfg(n_boot=100), out, mode="resume", backend=model, progress=False)
    assert len(model.prompts) == 4  # two new problems, two attempts each; the bootstrap settings may change
    assert report["n"] == 5 and report["n_boot"] == 100
    with pytest.raises(RlaifError, match="other settings"):
        evaluate_self_correction(PROBLEMS, cfg(max_new_tokens=9), out, mode="resume",
                                 backend=ScriptedModel(tiny_tokenizer), progress=False)


def test_self_correct_cli_on_a_tiny_model(tiny_model_dir, tmp_path):
    problems = tmp_path / "problems.jsonl"
    problems.write_text('{"prompt": "what is two plus two ?", "answer": "4"}\n'
                        '{"prompt": "what is two plus four ?", "answer": "6"}\n')
    args = ["self-correct", "--model", tiny_model_dir, "--problems", str(problems), "--out", str(tmp_path / "out"),
            "--max-new-tokens", "3", "--n-boot", "20", "--instruction", "what is the answer ?"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "Accuracy@t1" in result.output and "Δ^{c→i}" in result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["n"] == 2 and report["instruction"] == "what is the answer ?"
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "--resume" in again.output
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"prompt": "what?"}\n')
    bad = CliRunner().invoke(cli, ["self-correct", "--problems", str(missing), "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 1 and "answer" in bad.output and "Traceback" not in bad.output
