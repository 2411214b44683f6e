"""`rlaif retry-data`: fake mistakes taken back by [BACK] (retry_weak / retry_miss), exact for scripted and seeded draws."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlaif.cli import cli
from rlaif.errors import RlaifError
from rlaif.io import read_jsonl
from rlaif.selfcorrect.gsm8k import read_question_answers
from rlaif.selfcorrect.retry import RetryConfig, insert_retries, retry_record, split_solution, write_retry_data

GSM8K_TRAIN = Path(__file__).resolve().parents[1] / "examples" / "data" / "gsm8k_train.jsonl"  # the first 1,000 of train
JULIE = {
    "id": "julie",
    "question": "Julie is reading a 120-page book. Yesterday, she was able to read 12 pages and today, she read twice "
                "as many pages as yesterday. If she wants to read half of the remaining pages tomorrow, how many "
                "pages should she read?",
    "answer": "Maila read 12 x 2 = <<12*2=24>>24 pages today.\nSo she was able to read a total of 12 + 24 = "
              "<<12+24=36>>36 pages since yesterday.\nThere are 120 - 36 = <<120-36=84>>84 pages left to be read.\n"
              "Since she wants to read half of the remaining pages tomorrow, then she should read 84/2 = <<84/2=42>>42 "
              "pages.\n#### 42",
}
S1 = "Maila read 12 x 2 = 24 pages today."
S2 = "So she was able to read a total of 12 + 24 = 36 pages since yesterday."
S3 = "There are 120 - 36 = 84 pages left to be read."
S4 = "Since she wants to read half of the remaining pages tomorrow, then she should read 84/2 = 42 pages."


class ScriptedRng:
    """Draws given in advance; `choice` takes the last candidate and records what it was offered."""

    def __init__(self, draws):
        self.draws = list(draws)
        self.offered = []

    def random(self):
        return self.draws.pop(0)

    def choice(self, candidates):
        self.offered.append(list(candidates))
        return candidates[-1]


def test_scripted_draws_give_the_exact_retry_solution():
    rng = ScriptedRng([0.3, 0.7, 0.1, 0.2])  # p = 0.5: steps 1, 3 and 4 want a mistake, step 4 has no later step
    lines, inserted = insert_retries(["s1", "s2", "s3", "s4"], rng, 0.5, "weak", "[BACK]")
    assert lines == ["s4 [BACK]", "s1", "s2", "s4 [BACK]", "s3", "s4"] and inserted == 2
    assert rng.offered == [["s2", "s3", "s4"], ["s4"]]  # only later steps of the same solution
    rng = ScriptedRng([0.9, 0.4])
    lines, inserted = insert_retries(["s1", "s2"], rng, 0.5, "miss", "<back>", sentences=["q1", "q2"])
    assert lines == ["s1", "q2 <back>", "s2"] and inserted == 1 and rng.offered == [["q1", "q2"]]


def test_seeded_record_is_exact_and_reproducible():
    record = retry_record(JULIE, RetryConfig(p=0.5, seed=1))
    assert record["prompt"] == f"Human: {JULIE['question']}\n\nAssistant:"
    # pinned: (seed 1, id "julie") inserts a mistake before steps 1 and 3, each a later step of the solution
    assert record["completion"] == f" {S3} [BACK]\n{S1}\n{S2}\n{S4} [BACK]\n{S3}\n{S4}\n#### 42"
    assert record["retries"] == 2
    assert retry_record(JULIE, RetryConfig(p=0.5, seed=1)) == record  # the same draws every time
    other_id = retry_record({**JULIE, "id": "julie-2"}, RetryConfig(p=0.5, seed=1))
    taken_back = [line for line in other_id["completion"].strip().splitlines() if not line.endswith(" [BACK]")]
    assert taken_back == [S1, S2, S3, S4, "#### 42"]  # whatever the draws, removing the mistakes gives the solution


def test_miss_takes_mistakes_from_the_problem_statement():
    record = retry_record(JULIE, RetryConfig(p=1.0, seed=0, variant="miss"))
    lines = record["completion"].strip().splitlines()
    mistakes = [line[: -len(" [BACK]")] for line in lines if line.endswith(" [BACK]")]
    assert len(mistakes) == 4  # p = 1: every step, the last one too (the problem always has sentences)
    assert all(m in JULIE["question"] for m in mistakes)


def test_p_sets_the_rate_and_the_edges_hold():
    assert retry_record(JULIE, RetryConfig(p=0.0))["completion"] == f" {S1}\n{S2}\n{S3}\n{S4}\n#### 42"
    every = retry_record(JULIE, RetryConfig(p=1.0, seed=5))["completion"].strip().splitlines()
    assert [line.endswith("[BACK]") for line in every] == [True, False] * 3 + [False, False]
    for i in (0, 2, 4):  # each mistake is a step that comes later than the step it stands before
        steps = [S1, S2, S3, S4]
        assert steps.index(every[i][: -len(" [BACK]")]) > steps.index(every[i + 1])
    records = read_question_answers(str(GSM8K_TRAIN))
    config = RetryConfig(p=0.5, seed=0)
    made = sum(retry_record(r, config)["retries"] for r in records)
    eligible = sum(max(len(split_solution(r["answer"])[0]) - 1, 0) for r in records)  # the last step has no later step
    assert made / eligible == pytest.approx(0.5, abs=0.02)


def test_calculator_annotations_and_bad_records():
    steps, final = split_solution(JULIE["answer"])
    assert steps[0] == S1 and final == ["#### 42"]
    kept, _ = split_solution(JULIE["answer"], keep_calculator=True)
    assert "<<12*2=24>>" in kept[0]
    with pytest.raises(RlaifError, match="no solution steps"):
        retry_record({"id": "x", "question": "q", "answer": "#### 3"}, RetryConfig())
    with pytest.raises(RlaifError, match="probability"):
        RetryConfig(p=1.5)


def test_a_records_output_does_not_depend_on_the_others(tmp_path):
    other = {**JULIE, "id": "other"}
    write_retry_data([other, JULIE], RetryConfig(p=0.5, seed=1), tmp_path / "both.jsonl")
    write_retry_data([JULIE], RetryConfig(p=0.5, seed=1), tmp_path / "one.jsonl")
    both = {r["id"]: r for r in read_jsonl(tmp_path / "both.jsonl")}
    assert both["julie"] == next(read_jsonl(tmp_path / "one.jsonl"))


def test_retry_data_cli_writes_trl_prompt_completion_records(tmp_path):
    out = tmp_path / "retry.jsonl"
    args = ["retry-data", "--input", str(GSM8K_TRAIN), "--out", str(out), "--p", "0.5", "--seed", "0", "--limit", "50"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "fake mistakes" in result.output
    rows = list(read_jsonl(out))
    assert len(rows) == 50 and all(set(r) == {"id", "prompt", "completion", "retries"} for r in rows)
    assert all(r["prompt"].startswith("Human: ") and r["prompt"].endswith("\n\nAssistant:") for r in rows)
    assert all(r["completion"].startswith(" ") and r["completion"].rstrip().splitlines()[-1].startswith("####")
               for r in rows)
    assert CliRunner().invoke(cli, args).exit_code == 1  # an existing --out needs --resume or --overwrite
    chat = CliRunner().invoke(cli, [*args[:4], str(tmp_path / "chat.jsonl"), "--format", "chat", "--limit", "3"])
    assert chat.exit_code == 0, chat.output
    first = json.loads((tmp_path / "chat.jsonl").read_text().splitlines()[0])
    assert first["prompt"][0]["role"] == "user" and first["completion"][0]["role"] == "assistant"
    from trl.data_utils import is_conversational  # noqa: PLC0415

    assert is_conversational(first)
