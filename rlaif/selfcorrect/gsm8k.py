"""GSM8K answers: the gold number after `####`, the predicted number, and the exact-match reward.

- gold: the number after the last `####` of the answer (GSM8K's last line, `#### 72`);
  an answer without `####` (a `prompt`/`answer` file) is read as the number it holds.
- prediction: the number after the last "The final answer is" (the form the SCoRe
  instructions ask for: "Final Answer: The final answer is $72$. I hope it is
  correct."), else the last number in the text; None when the text has no number.
- match: numeric equality after dropping thousands separators ("1,000" = "1000",
  "18.00" = "18").

`exact_match_reward` has TRL's reward signature and reads the gold answers from the
data set's `answer` column, so it plugs into GRPO / SCoRe as `--reward-fn
rlaif.selfcorrect.gsm8k:exact_match_reward` as well.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from rlaif.errors import RlaifError
from rlaif.io import parse_column_map, read_records, read_rows
from rlaif.text import as_text

# A number: thousands groups ("1,234,567") or plain digits, an optional sign and decimals.
NUMBER = re.compile(r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
FINAL_ANSWER = re.compile(r"the\s+final\s+answer\s+is", re.I)
GOLD_MARK = "####"


def parse_number(text: str) -> Decimal | None:
    """The value of a number as NUMBER matches it (commas dropped)."""
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def gold_answer(answer: str) -> str:
    """The gold number of a GSM8K answer (after the last `####`), or of a bare answer such as "72"."""
    text = answer.rsplit(GOLD_MARK, 1)[1] if GOLD_MARK in answer else answer
    match = NUMBER.search(text)
    if match is None:
        shown = text.strip()[:60] or "(nothing)"
        raise RlaifError(f"The answer {shown!r} holds no number: give GSM8K answers ending in '#### N' "
                         "or an answer column with the number.")
    return match.group(0).replace(",", "")


def predicted_answer(text: str) -> str | None:
    """The number after the last "The final answer is", else the last number in the text (None: no number)."""
    finals = list(FINAL_ANSWER.finditer(text))
    if finals:
        match = NUMBER.search(text, finals[-1].end())
        if match is not None:
            return match.group(0).replace(",", "")
    numbers = NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def same_number(predicted: str | None, gold: str) -> bool:
    if predicted is None:
        return False
    a, b = parse_number(predicted), parse_number(gold)
    return a is not None and b is not None and a == b


def is_correct(text: str, gold: str) -> bool:
    """Whether the completion's answer equals the gold number."""
    return same_number(predicted_answer(text), gold)


def exact_match_reward(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str] | None = None,
                       **kwargs: Any) -> list[float]:
    """1.0 where the completion's answer equals the gold answer (the `answer` column), else 0.0."""
    if answer is None:
        raise RlaifError("The exact-match reward needs the gold answers: the problems need an `answer` column "
                         "(GSM8K's '#### N' answers or the number itself).")
    if len(answer) != len(completions):
        raise RlaifError(f"Got {len(completions)} completions but {len(answer)} gold answers.")
    golds = [gold_answer(str(a)) for a in answer]
    return [float(is_correct(as_text(c, "a completion"), g)) for c, g in zip(completions, golds)]


def read_question_answers(path: str, column_map: Sequence[str] = (), limit: int | None = None) -> list[dict[str, str]]:
    """Records `{id, question, answer}` from GSM8K's `question`/`answer` form, or `prompt`/`answer`."""
    mapping = parse_column_map(column_map)
    if "question" not in mapping:
        rows = read_rows(path)
        if rows and "question" not in rows[0] and "prompt" in rows[0]:
            mapping["question"] = "prompt"
    records = read_records(path, ["question", "answer"], column_map=mapping)
    return records[:limit] if limit else records


def read_problems(path: str, column_map: Sequence[str] = (), limit: int | None = None) -> list[dict[str, str]]:
    """Problems `{id, question, answer, gold}`; `gold` is the parsed gold number (none is an error naming the record)."""
    records = read_question_answers(path, column_map, limit)
    for number, record in enumerate(records, 1):
        try:
            record["gold"] = gold_answer(record["answer"])
        except RlaifError as err:
            raise RlaifError(f"{path} record {number} (id {record['id']}): {err}") from None
    return records
