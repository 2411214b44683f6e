"""d-RLAIF: the feedback model rates one response 1-10; the reward is the
probability-weighted rating, normalised to [-1, 1].

    s = sum_i i * P(i)  over i = 1..10, P normalised over those ten
    score = (s - 5.5) / 4.5

Ratings are scored by the engine, so "10" (two tokens in most vocabularies)
gets its exact probability and "1" only its share that is not "10".
`DRLAIFScorer` has TRL's reward-function signature, so it plugs into PPO
(through rlaif's adapter), GRPO and RLOO.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rlaif import __version__
from rlaif.backends import Backend, load_backend
from rlaif.backends.default import cache_root
from rlaif.cache import NullCache, ResultCache
from rlaif.constitution import load_constitution
from rlaif.errors import RlaifError
from rlaif.io import (
    RecordWriter,
    as_text,
    config_digest,
    meta_path,
    prepare_output,
    read_jsonl,
    write_json,
)
from rlaif.label import format_conversation
from rlaif.prompts import load_template
from rlaif.records import Score
from rlaif.scoring import OptionResult, ScoringEngine

RATINGS = [str(i) for i in range(1, 11)]


@dataclass
class ScoreConfig:
    """How d-RLAIF rates responses. Fields match `rlaif score` flags one to one."""

    model: str = field(default="default", metadata={"help": "Feedback model: `default`, a Hugging Face id or a local directory."})
    constitution: str = field(default="cai-harmless", metadata={"help": "Built-in constitution name or YAML path."})
    principle: tuple[str, ...] = field(default=(), metadata={"help": "Principle id(s) to rate by; several are averaged. Default: the constitution's first."})
    template: str = field(default="drlaif-score", metadata={"help": "Rating template (options must be the ratings 1..10)."})
    batch_tokens: int = field(default=8192, metadata={"help": "Token budget of one forward batch."})
    cache_dir: str | None = field(default=None, metadata={"help": "Raw-result cache directory (default $RLAIF_CACHE_DIR or ~/.cache/rlaif)."})
    no_cache: bool = field(default=False, metadata={"help": "Do not read or write the raw-result cache."})
    dtype: str = field(default="float32", metadata={"help": "Model weights dtype."})

    def __post_init__(self) -> None:
        if self.principle is None:
            self.principle = ()
        if isinstance(self.principle, str):
            self.principle = (self.principle,)
        self.principle = tuple(self.principle)


def expected_rating(probs: dict[str, float]) -> float:
    """sum_i i * P(i) over the ratings, P already normalised over them."""
    return sum(int(rating) * p for rating, p in probs.items())


def rating_to_score(mean_rating: float) -> float:
    """Map a 1..10 rating to [-1, 1]."""
    return (mean_rating - 5.5) / 4.5


class DRLAIFScorer:
    """`scorer(prompts, completions) -> list[float]` in [-1, 1] (TRL's reward-function signature)."""

    def __init__(self, config: ScoreConfig | None = None, backend: Backend | None = None):
        self.config = config or ScoreConfig()
        self.constitution = load_constitution(self.config.constitution)
        ids = self.config.principle or (self.constitution.principles[0].id,)
        self.principles = [self.constitution.get(pid) for pid in ids]
        self.template = load_template(self.config.template)
        if sorted(self.template.options) != sorted(RATINGS):
            raise RlaifError(f"Template {self.template.name!r} must have the options 1..10 for d-RLAIF.")
        self.template.render(conversation="c", response="r", principle="p")
        self.backend = backend or load_backend(self.config.model, dtype=self.config.dtype,
                                               batch_tokens=self.config.batch_tokens)
        cache = NullCache() if self.config.no_cache else ResultCache(Path(self.config.cache_dir or cache_root()) / "results.sqlite")
        self.engine = ScoringEngine(self.backend, cache)
        self.__name__ = "drlaif"  # TRL logs reward functions by name

    def rate(self, prompts: list[Any], completions: list[Any]) -> list[list[OptionResult]]:
        """Per response, one rating distribution per principle."""
        if len(prompts) != len(completions):
            raise RlaifError(f"Got {len(prompts)} prompts but {len(completions)} completions; they must pair up.")
        rendered = [self.template.render(conversation=format_conversation(_text(p)), response=_text(c).strip(),
                                         principle=principle.text)
                    for p, c in zip(prompts, completions) for principle in self.principles]
        results = self.engine.score(rendered, self.template.option_spellings())
        n = len(self.principles)
        return [results[i * n:(i + 1) * n] for i in range(len(prompts))]

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        return [score_of(rs)[0] for rs in self.rate(prompts, completions)]


def score_of(results: list[OptionResult]) -> tuple[float, float, dict[str, float], float]:
    """(score, mean rating, rating probabilities, option mass), averaged over principles."""
    probs = {r: sum(res.probs[r] for res in results) / len(results) for r in RATINGS}
    mean = expected_rating(probs)
    mass = sum(res.mass for res in results) / len(results)
    return rating_to_score(mean), mean, probs, mass


def _text(item: Any) -> str:
    """TRL passes plain strings or conversations (lists of {role, content}); render the latter as turns."""
    return as_text(item, "a prompt or completion")


def score_records(records: list[dict[str, str]], config: ScoreConfig, out: str | Path, overwrite: bool = False,
                  backend: Backend | None = None, chunk: int = 16, progress: bool = True) -> list[dict[str, Any]]:
    """Score `records` (id, prompt, response), appending Score rows to `out`; resumes what is there."""
    out = Path(out)
    digest = config_digest(config)
    done = prepare_output(out, digest, overwrite)
    todo = [r for r in records if r["id"] not in done]
    started = time.time()
    if todo:
        scorer = DRLAIFScorer(config, backend)
        meta = {"model": scorer.backend.model_id, "template": scorer.template.name, "template_sha256": scorer.template.sha256,
                "constitution": scorer.constitution.name, "constitution_sha256": scorer.constitution.sha256,
                "principles": [p.id for p in scorer.principles], "rlaif_version": __version__}
        write_json(meta_path(out), {"config": asdict(config), "config_digest": digest, **meta, "status": "running"})
        with RecordWriter(out) as writer, tqdm(total=len(records), initial=len(records) - len(todo), unit="response",
                                               desc="score", disable=not progress) as bar:
            for start in range(0, len(todo), chunk):
                part = todo[start:start + chunk]
                for record, results in zip(part, scorer.rate([r["prompt"] for r in part], [r["response"] for r in part])):
                    score, mean, probs, mass = score_of(results)
                    writer.write(asdict(Score(id=record["id"], prompt=record["prompt"], response=record["response"],
                                              score=score, mean_rating=mean, p_ratings=probs, option_mass=mass, meta=meta)))
                bar.update(len(part))
        write_json(meta_path(out), {"config": asdict(config), "config_digest": digest, **meta, "status": "done", "scored_this_run": len(todo),
                                    "seconds_this_run": round(time.time() - started, 2)})
    rows = {row["id"]: row for row in read_jsonl(out)} if out.exists() else {}
    missing = [r["id"] for r in records if r["id"] not in rows]
    if missing:
        raise RlaifError(f"{len(missing)} response(s) have no score in {out}; rerun the same command to finish them.")
    return [rows[r["id"]] for r in records]
