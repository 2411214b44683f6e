"""Retry data (Ye et al. 2024, "Physics of Language Models Part 2.2: How to Learn From Mistakes").

A step-by-step solution (one step a line, as GSM8K answers are) becomes a solution
with fake mistakes that are taken back: before each step, with probability p, a
wrong step is written, then the `[BACK]` marker, then the correct step:

    Natalia sold 48+24 = 72 clips altogether in April and May. [BACK]
    Natalia sold 48/2 = 24 clips in May.
    Natalia sold 48+24 = 72 clips altogether in April and May.
    #### 72

- `weak` (the paper's retry_weak): the wrong step is a step drawn from later in the same
  solution, i.e. a step written before it can be computed. The paper found p = 0.5 best.
  The last step has no later step, so it never gets a mistake.
- `miss` (our reading of the paper's retry_miss, not checked against its text): the
  wrong step is a sentence of the problem statement, so a mistake can be made from the
  problem alone, with no solution structure.

The final `#### N` line is never a mistake and gets none. Each record draws from its
own generator, seeded by (seed, record id), so a record's output does not depend on
the others or on their order. GSM8K's calculator annotations (`<<48/2=24>>`) are dropped
unless kept.

What the paper found: retry data helps when it is in the *pretraining* data (higher
accuracy than the same amount of error-free data); LoRA fine-tuning a model pretrained
on error-free data on retry data did not teach it to correct errors (full fine-tuning
with enough data helped, at a cost close to pretraining).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif.errors import RlaifError
from rlaif.runs import Run, run_chunks
from rlaif.text import render_prompt

VARIANTS = ("weak", "miss")
FORMATS = ("plain", "chat")
CALCULATOR = re.compile(r"<<[^<>]*>>")
_SENTENCE = re.compile(r"(?<=[.?!])\s+")


@dataclass
class RetryConfig:
    """How `rlaif retry-data` writes retry data; fields match its flags one to one."""

    p: float = field(default=0.5, metadata={"help": "Probability per step of inserting a fake mistake (the paper's retry rate)."})
    seed: int = field(default=0, metadata={"help": "Seed; each record draws from (seed, record id)."})
    variant: str = field(default="weak", metadata={"help": "weak: the mistake is a later step of the solution (retry_weak); miss: a sentence of the problem."})
    marker: str = field(default="[BACK]", metadata={"help": "The token that takes a mistake back."})
    format: str = field(default="plain", metadata={"help": "plain: prompt 'Human: Q\\n\\nAssistant:' and completion text; chat: message lists."})
    keep_calculator: bool = field(default=False, metadata={"help": "Keep GSM8K's <<a*b=c>> calculator annotations."})

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise RlaifError(f"--p must be a probability in [0, 1], got {self.p}.")
        if self.variant not in VARIANTS:
            raise RlaifError(f"--variant must be one of {', '.join(VARIANTS)}, not {self.variant!r}.")
        if self.format not in FORMATS:
            raise RlaifError(f"--format must be one of {', '.join(FORMATS)}, not {self.format!r}.")
        if not self.marker.strip():
            raise RlaifError("--marker is empty: give the token that marks a mistake as taken back, e.g. [BACK].")


def record_rng(seed: int, record_id: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).hexdigest()
    return random.Random(int(digest[:16], 16))


def split_solution(answer: str, keep_calculator: bool = False) -> tuple[list[str], list[str]]:
    """(reasoning steps, final lines): non-empty lines, the `####` answer line apart."""
    text = answer if keep_calculator else CALCULATOR.sub("", answer)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    final = [line for line in lines if line.startswith("####")]
    return [line for line in lines if not line.startswith("####")], final


def problem_sentences(question: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(question.strip()) if s.strip()]


def insert_retries(steps: list[str], rng: random.Random, p: float, variant: str, marker: str,
                   sentences: list[str] = ()) -> tuple[list[str], int]:
    """The steps with fake mistakes taken back; returns (lines, how many mistakes).

    One draw per step decides whether it gets a mistake (so p alone sets the rate); a
    step with no candidate mistake (the last step under `weak`) gets none.
    """
    lines, inserted = [], 0
    for i, step in enumerate(steps):
        wanted = rng.random() < p
        pool = steps[i + 1:] if variant == "weak" else list(sentences)
        candidates = [c for c in pool if c != step]
        if wanted and candidates:
            lines.append(f"{rng.choice(candidates)} {marker}")
            inserted += 1
        lines.append(step)
    return lines, inserted


def retry_record(record: dict[str, str], config: RetryConfig) -> dict[str, Any]:
    """One SFT record {id, prompt, completion, retries} in TRL's prompt-completion form."""
    steps, final = split_solution(record["answer"], config.keep_calculator)
    if not steps:
        raise RlaifError(f"Record {record['id']}: the answer has no solution steps (one step a line); "
                         "retry data needs step-by-step solutions.")
    rng = record_rng(config.seed, record["id"])
    lines, inserted = insert_retries(steps, rng, config.p, config.variant, config.marker,
                                     problem_sentences(record["question"]))
    solution = "\n".join([*lines, *final])
    if config.format == "chat":
        prompt: Any = [{"role": "user", "content": record["question"]}]
        completion: Any = [{"role": "assistant", "content": solution}]
    else:
        prompt, completion = render_prompt(None, record["question"], "plain"), " " + solution
    return {"id": record["id"], "prompt": prompt, "completion": completion, "retries": inserted}


def write_retry_data(records: Iterable[dict[str, str]], config: RetryConfig, out: str | Path, mode: str = "new",
                     inputs: Iterable[str] = ()) -> dict[str, Any]:
    """Write one retry record per input record (`{id, question, answer}`) to `out`; returns counts."""
    records = list(records)
    counts = {"records": len(records), "written_this_run": 0, "mistakes_this_run": 0, "steps_this_run": 0}

    def work(part: list[dict[str, str]]) -> list[dict[str, Any]]:
        rows = [retry_record(r, config) for r in part]
        counts["mistakes_this_run"] += sum(row["retries"] for row in rows)
        counts["steps_this_run"] += sum(len(split_solution(r["answer"], config.keep_calculator)[0]) for r in part)
        return rows

    with Run(out, config, mode, inputs=inputs, stage="retry-data") as run:
        run.start(None)
        counts["written_this_run"] = run_chunks(run, records, work, chunk=256)
        run.finish(**counts)
    return counts
