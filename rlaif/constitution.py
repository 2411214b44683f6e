"""Constitutions: YAML files of principles, validated; seeded principle choice.

A constitution is data (yaml.safe_load; unknown keys are an error). Built-ins
live in constitutions/ at the repository root and inside the wheel; a path to
the user's own file works the same way.
"""

from __future__ import annotations

import difflib
import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from rlaif.config import read_yaml
from rlaif.errors import RlaifError
from rlaif.resources import data_dir

TOP_KEYS = {"name", "description", "source", "principles", "critiques", "few_shot", "cot_few_shot"}
PRINCIPLE_KEYS = {"id", "text"}
CRITIQUE_KEYS = {"id", "critique", "revision"}
FEW_SHOT_KEYS = {"conversation", "response_a", "response_b", "answer", "rationale"}


@dataclass(frozen=True)
class Principle:
    id: str
    text: str


@dataclass(frozen=True)
class Critique:
    id: str
    critique: str
    revision: str


@dataclass
class Constitution:
    name: str
    principles: list[Principle]
    description: str = ""
    source: str = ""
    critiques: list[Critique] = field(default_factory=list)
    few_shot: list[dict[str, str]] = field(default_factory=list)
    cot_few_shot: list[dict[str, str]] = field(default_factory=list)
    sha256: str = ""

    def principle_ids(self) -> list[str]:
        return [p.id for p in self.principles]

    def get(self, principle_id: str) -> Principle:
        for principle in self.principles:
            if principle.id == principle_id:
                return principle
        raise RlaifError(_unknown("principle", principle_id, self.principle_ids(), f"constitution {self.name!r}"))


def builtin_constitutions() -> list[str]:
    return sorted(p.stem for p in data_dir("constitutions").glob("*.yaml"))


def load_constitution(name_or_path: str | Path) -> Constitution:
    """A built-in constitution by name (`cai-harmless`) or a YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        builtin = data_dir("constitutions") / f"{name_or_path}.yaml"
        if not builtin.exists():
            raise RlaifError(_unknown("constitution", str(name_or_path), builtin_constitutions(), "built-ins") +
                             " Or pass the path of a YAML file.")
        path = builtin
    if not path.is_file():
        raise RlaifError(f"Constitution file {path} does not exist or is not a file: check the path, or use a built-in "
                         f"({', '.join(builtin_constitutions())}).")
    data = read_yaml(path, "Constitution")  # one line for a tag, bad syntax or non-UTF-8 text
    text = path.read_text(encoding="utf-8")
    constitution = _parse(data, path)
    constitution.sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return constitution


def _parse(data: Any, path: Path) -> Constitution:
    if not isinstance(data, dict):
        raise RlaifError(f"Constitution {path} must be a mapping with at least `name` and `principles`.")
    _check_keys(data, TOP_KEYS, f"constitution {path}")
    if not isinstance(data.get("principles"), list) or not data["principles"]:
        raise RlaifError(f"Constitution {path} needs a non-empty `principles` list of {{id, text}}.")
    principles = [Principle(**_entry(item, PRINCIPLE_KEYS, f"{path} principle {i + 1}"))
                  for i, item in enumerate(data["principles"])]
    critiques = [Critique(**_entry(item, CRITIQUE_KEYS, f"{path} critique {i + 1}"))
                 for i, item in enumerate(data.get("critiques") or [])]
    ids = [p.id for p in principles]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise RlaifError(f"Constitution {path} repeats principle id(s) {', '.join(duplicates)}; ids must be unique.")
    few_shot = [_few_shot(item, f"{path} few_shot {i + 1}") for i, item in enumerate(data.get("few_shot") or [])]
    cot_few_shot = [_few_shot(item, f"{path} cot_few_shot {i + 1}", rationale=True)
                    for i, item in enumerate(data.get("cot_few_shot") or [])]
    return Constitution(
        name=str(data.get("name") or path.stem), principles=principles, description=str(data.get("description", "")),
        source=str(data.get("source", "")), critiques=critiques, few_shot=few_shot, cot_few_shot=cot_few_shot,
    )


def _check_keys(item: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise RlaifError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(sorted(allowed))}.")


def _entry(item: Any, keys: set[str], where: str) -> dict[str, str]:
    if not isinstance(item, dict):
        raise RlaifError(f"{where} must be a mapping with keys {', '.join(sorted(keys))}.")
    _check_keys(item, keys, where)
    missing = sorted(k for k in keys if not str(item.get(k) or "").strip())
    if missing:
        raise RlaifError(f"{where} lacks {', '.join(missing)} (or it is empty).")
    return {k: str(item[k]).strip() for k in keys}


def _few_shot(item: Any, where: str, rationale: bool = False) -> dict[str, str]:
    needed = {"conversation", "response_a", "response_b", "answer"} | ({"rationale"} if rationale else set())
    entry = _entry({k: v for k, v in (item or {}).items() if k in needed} if isinstance(item, dict) else item,
                   needed, where)
    if isinstance(item, dict):
        _check_keys(item, FEW_SHOT_KEYS, where)
    if entry["answer"] not in ("A", "B"):
        raise RlaifError(f"{where}: answer must be A or B, not {entry['answer']!r}.")
    return entry


def _unknown(kind: str, name: str, known: list[str], where: str) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"Unknown {kind} {name!r} in {where}.{hint} Known: {', '.join(known)}."


def pair_rng(seed: int, pair_id: str) -> random.Random:
    """A generator seeded by (seed, pair id): reruns and resumes choose the same."""
    digest = hashlib.sha256(f"{seed}:{pair_id}".encode()).hexdigest()
    return random.Random(int(digest[:16], 16))


def choose_principles(
    constitution: Constitution, mode: str, pair_id: str, seed: int = 0, k: int = 4, only: list[str] | None = None
) -> list[Principle]:
    """The principles that judge one pair: `all`, `one` (CAI's one per pair) or `k` sampled, seeded by the pair id."""
    pool = [constitution.get(pid) for pid in only] if only else list(constitution.principles)
    if mode == "all":
        return pool
    if mode == "one":
        return [pair_rng(seed, pair_id).choice(pool)]
    if mode == "k":
        if k < 1:
            raise RlaifError(f"--k must be at least 1, got {k}.")
        chosen = pair_rng(seed, pair_id).sample(range(len(pool)), min(k, len(pool)))
        return [pool[i] for i in sorted(chosen)]
    raise RlaifError(f"Unknown principle mode {mode!r}: use all, one or k.")
