"""`evaluate_self_correction`: two greedy attempts per problem through any back end, and the report.

Attempt 1 continues chat(x) (or "Human: x\\n\\nAssistant:"); attempt 2 continues
chat(x) + y1 + bridge (the text form of SCoRe's second prompt, `rlaif.selfcorrect.prompts`).
Both are greedy and scored by GSM8K exact match. Per-problem rows go to
OUT/attempts.jsonl through `rlaif.runs.Run` (locked, fsynced per chunk, resumable);
the report (OUT/report.json, OUT/report.md) is computed from every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rlaif import __version__
from rlaif.backends import Backend, GenerationSettings, parse_option_items
from rlaif.backends.cached import open_backend
from rlaif.errors import RlaifError
from rlaif.io import write_json
from rlaif.runs import Run, rows_by_key, run_chunks
from rlaif.selfcorrect.gsm8k import predicted_answer, same_number
from rlaif.selfcorrect.metrics import render_markdown, self_correction_metrics
from rlaif.selfcorrect.prompts import (FIRST_INSTRUCTIONS, INSTRUCTIONS, bridge_for, cut_at_turn, first_prompt,
                                       resolve_instruction, second_prompt_text, stops_for)
from rlaif.text import PROMPT_FORMATS, render_prompt, resolve_prompt_format

ATTEMPTS_NAME = "attempts.jsonl"
CHUNK = 16  # problems per chunk: the unit written (and fsynced) between two flushes
# What the attempts depend on (a resume must match these); the bootstrap settings only change the report.
ATTEMPT_SETTINGS = ("model", "instruction", "first_instruction", "prompt_format", "max_new_tokens")


@dataclass
class SelfCorrectConfig:
    """How `rlaif self-correct` runs; fields match its flags one to one."""

    model: str = field(default="default", metadata={"help": "Model: `default`, a Hugging Face id or directory, or a server URL http://HOST:PORT/v1."})
    instruction: str = field(default="math", metadata={"help": "Self-correction instruction: math (SCoRe's, App. C), constitution, or the text itself."})
    first_instruction: str = field(default="math", metadata={"help": "Before the problem in attempt 1: math (SCoRe's), none, or the text itself."})
    prompt_format: str = field(default="auto", metadata={"help": "auto (chat template if the model has one), chat, or plain 'Human: ... Assistant:' text."})
    max_new_tokens: int = field(default=256, metadata={"help": "Maximum new tokens per attempt."})
    n_boot: int = field(default=1000, metadata={"help": "Bootstrap resamples for the 95% intervals."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap resamples."})
    cache_dir: str | None = field(default=None, metadata={"help": "Raw-result cache directory (default $RLAIF_CACHE_DIR or ~/.cache/rlaif)."})
    no_cache: bool = field(default=False, metadata={"help": "Do not read or write the raw-result cache."})
    backend_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "The back end's own options (KEY=VALUE)."})

    def __post_init__(self) -> None:
        self.backend_options = parse_option_items(self.backend_options)
        if self.max_new_tokens < 1 or self.n_boot < 1:
            raise RlaifError("--max-new-tokens and --n-boot must be at least 1.")
        if self.prompt_format not in PROMPT_FORMATS:
            raise RlaifError(f"--prompt-format must be one of {', '.join(PROMPT_FORMATS)}, not {self.prompt_format!r}.")
        self.instructions()

    def instructions(self) -> tuple[str, str]:
        return (resolve_instruction(self.instruction, INSTRUCTIONS, "--instruction"),
                resolve_instruction(self.first_instruction, FIRST_INSTRUCTIONS, "--first-instruction", allow_empty=True))


class TwoAttempts:
    """Greedy first and second attempts of a model through the back-end layer (text API)."""

    def __init__(self, config: SelfCorrectConfig, backend: Backend | None = None):
        self.config = config
        self.backend = open_backend(config.model, config.backend_options, config.cache_dir, config.no_cache, backend)
        tokenizer = self.backend.tokenizer
        self.prompt_format = resolve_prompt_format(tokenizer, config.prompt_format)
        self.bridge = bridge_for(tokenizer, self.prompt_format)
        self.instruction, self.first_instruction = config.instructions()
        self.settings = GenerationSettings(max_new_tokens=config.max_new_tokens, temperature=0.0,
                                           stop=stops_for(self.prompt_format))

    def first_prompts(self, questions: Sequence[str]) -> list[str]:
        return [render_prompt(self.backend.tokenizer, first_prompt(q, self.first_instruction), self.prompt_format)
                for q in questions]

    def _generate(self, prompts: list[str]) -> list[str]:
        return [cut_at_turn(text) for text in self.backend.generate(prompts, [self.settings] * len(prompts))]

    def run(self, questions: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
        """(second prompts, first attempts, second attempts), attempts cut at a new speaker turn."""
        firsts = self.first_prompts(questions)
        attempt1 = self._generate(firsts)
        seconds = [second_prompt_text(p, y1, self.bridge, self.instruction) for p, y1 in zip(firsts, attempt1)]
        return seconds, attempt1, self._generate(seconds)


def score_row(problem: dict[str, str], attempt1: str, attempt2: str) -> dict[str, Any]:
    answer1, answer2 = predicted_answer(attempt1), predicted_answer(attempt2)
    return {"id": problem["id"], "question": problem["question"], "gold": problem["gold"],
            "attempt1": attempt1.strip(), "attempt2": attempt2.strip(), "answer1": answer1, "answer2": answer2,
            "correct1": same_number(answer1, problem["gold"]), "correct2": same_number(answer2, problem["gold"])}


def evaluate_self_correction(problems: list[dict[str, str]], config: SelfCorrectConfig, out_dir: str | Path,
                             mode: str = "new", backend: Backend | None = None, inputs: Sequence[str] = (),
                             progress: bool = True) -> dict[str, Any]:
    """Two attempts per problem (`{id, question, gold}`), rows to OUT/attempts.jsonl, report to OUT/report.{json,md}.

    `mode`: new (OUT must hold no earlier run), resume or overwrite.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RlaifError(f"--out {out} is a file; give a directory for attempts.jsonl and the reports.")
    if not problems:
        raise RlaifError("No problems to evaluate.")
    settings = {name: getattr(config, name) for name in ATTEMPT_SETTINGS}
    with Run(out / ATTEMPTS_NAME, settings, mode, inputs=inputs, stage="self-correct") as run:
        todo = list(run.todo(problems))
        attempts = None
        if todo or not run.old_meta:
            attempts = TwoAttempts(config, backend)
            run.start(attempts.backend.model_id, prompt_format=attempts.prompt_format, rlaif_version=__version__)

            def work(part: list[dict[str, str]]) -> list[dict[str, Any]]:
                _, first, second = attempts.run([p["question"] for p in part])
                return [score_row(p, y1, y2) for p, y1, y2 in zip(part, first, second)]

            with tqdm(total=len(problems), initial=len(problems) - len(todo), unit="problem", desc="self-correct",
                      disable=not progress) as bar:
                run_chunks(run, todo, work, CHUNK, bar)
        rows = rows_by_key(out / ATTEMPTS_NAME, (p["id"] for p in problems))
        missing = [p["id"] for p in problems if p["id"] not in rows]
        if missing:
            raise RlaifError(f"{len(missing)} problem(s) have no attempts in {out / ATTEMPTS_NAME}; rerun with --resume.")
        ordered = [rows[p["id"]] for p in problems]
        report = build_report(ordered, config, run.meta.get("model") or run.old_meta.get("model"), inputs)
        write_reports(out, report, ordered)
        if attempts is not None:
            run.finish(**{k: report[k] for k in ("n", "accuracy_t1", "accuracy_t2", "delta")})
    return report


def build_report(rows: list[dict[str, Any]], config: SelfCorrectConfig, model: str | None,
                 inputs: Sequence[str]) -> dict[str, Any]:
    report = self_correction_metrics([r["correct1"] for r in rows], [r["correct2"] for r in rows],
                                     config.n_boot, config.seed)
    instruction, first = config.instructions()
    report.update(model=model, problems=", ".join(map(str, inputs)) or None, n_boot=config.n_boot, seed=config.seed,
                  instruction=instruction, first_instruction=first, max_new_tokens=config.max_new_tokens,
                  no_number_t1=sum(r["answer1"] is None for r in rows),
                  no_number_t2=sum(r["answer2"] is None for r in rows), rlaif_version=__version__)
    return report


def pick_examples(rows: list[dict[str, Any]], per_kind: int = 2) -> list[dict[str, Any]]:
    """A few wrong→right and right→wrong problems (the two kinds Δ counts), then others."""
    kinds = [[r for r in rows if not r["correct1"] and r["correct2"]], [r for r in rows if r["correct1"] and not r["correct2"]]]
    picked = [r for kind in kinds for r in kind[:per_kind]]
    return picked or rows[:per_kind]


def write_reports(out: Path, report: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    write_json(out / "report.json", report)
    (out / "report.md").write_text(render_markdown(report, pick_examples(rows)), encoding="utf-8")
