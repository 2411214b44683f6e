"""The CAI paper's few-shot critique/revision examples, and how to tell when a model copies them.

The examples (templates/cai_critique_fewshot.yaml) are shown before a critique or
revision with `rlaif revise --few-shot N`. A small model often recites them: a
text that repeats `COPY_WORDS` consecutive words of an example (and not of its own
conversation) is a copy, cut where the copy starts (`cut_few_shot_copy`).
"""

from __future__ import annotations

import re

import yaml

from rlaif.errors import RlaifError
from rlaif.resources import data_dir

FEW_SHOT_FILE = "cai_critique_fewshot.yaml"
FEW_SHOT_KEYS = ("conversation", "critique_request", "critique", "revision_request", "revision")
COPY_WORDS = 8  # this many consecutive words shared with a few-shot example mark copied text
_WORD = re.compile(r"[A-Za-z0-9']+")


def load_few_shot(count: int) -> list[dict[str, str]]:
    """The first `count` of the CAI paper's few-shot critique/revision examples,
    from templates/cai_critique_fewshot.yaml."""
    if count == 0:
        return []
    data = yaml.safe_load((data_dir("templates") / FEW_SHOT_FILE).read_text(encoding="utf-8"))
    examples = data["examples"]
    if count > len(examples):
        raise RlaifError(f"--few-shot {count}: there are only {len(examples)} few-shot examples; use at most that.")
    return [{key: str(ex[key]).strip() for key in FEW_SHOT_KEYS} for ex in examples[:count]]


def all_few_shot() -> list[dict[str, str]]:
    """Every few-shot critique/revision example (whatever --few-shot shows, exports check against all)."""
    data = yaml.safe_load((data_dir("templates") / FEW_SHOT_FILE).read_text(encoding="utf-8"))
    return load_few_shot(len(data["examples"]))


def word_ngrams(text: str, n: int = COPY_WORDS) -> set[tuple[str, ...]]:
    """Every run of `n` consecutive words (lower case, punctuation dropped) in `text`."""
    words = [w.lower() for w in _WORD.findall(text)]
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def few_shot_ngrams(examples: list[dict[str, str]]) -> frozenset[tuple[str, ...]]:
    """The word runs of the examples' own texts (conversation, critique, revision), which a copy repeats."""
    return frozenset(gram for ex in examples for key in ("conversation", "critique", "revision")
                     for gram in word_ngrams(ex[key]))


def cut_few_shot_copy(text: str, grams: frozenset[tuple[str, ...]], own: set[tuple[str, ...]] = frozenset()) -> tuple[str, bool]:
    """`text` up to the first run of COPY_WORDS words it shares with a few-shot example but not with `own` (its
    conversation and initial response), and whether it had one."""
    if not grams:
        return text, False
    spans = [(m.start(), m.group().lower()) for m in _WORD.finditer(text)]
    for i in range(len(spans) - COPY_WORDS + 1):
        gram = tuple(word for _, word in spans[i:i + COPY_WORDS])
        if gram in grams and gram not in own:
            return text[:spans[i][0]].rstrip(), True
    return text, False
