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

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlaif import __version__
from rlaif.backends import Backend, parse_option_items
from rlaif.backends.cached import open_backend
from rlaif.constitution import load_constitution
from rlaif.errors import RlaifError
from rlaif.io import stage_records
from rlaif.limits import LengthLimit, check_length_options
from rlaif.runs import rows_by_key, run_chunks
from rlaif.shards import open_run
from rlaif.text import as_text
from rlaif.text import format_conversation
from rlaif.templates import load_template
from rlaif.records import Score
from rlaif.options import OptionResult, ScoringEngine

RATINGS = [str(i) for i in range(1, 11)]


@dataclass
class ScoreConfig:
    """How d-RLAIF rates responses. Fields match `rlaif score` flags one to one."""

    model: str = field(default="default", metadata={"help": "Feedback model: `default`, a Hugging Face id or directory, or a server URL http://HOST:PORT/v1."})
    constitution: str = field(default="cai-harmless", metadata={"help": "Built-in constitution name or YAML path."})
    principle: tuple[str, ...] = field(default=(), metadata={"help": "Principle id(s) to rate by; several are averaged. Default: the constitution's first."})
    template: str = field(default="drlaif-score", metadata={"help": "Rating template (options must be the ratings 1..10)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Raw-result cache directory (default $RLAIF_CACHE_DIR or ~/.cache/rlaif)."})
    no_cache: bool = field(default=False, metadata={"help": "Do not read or write the raw-result cache."})
    backend_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "The back end's own options (KEY=VALUE)."})
    max_prompt_tokens: int | None = field(default=None, metadata={"help": "Longest prompt, in tokens (default: what the model takes); a response whose prompt is longer is skipped or refused (--on-too-long)."})
    on_too_long: str = field(default="skip", metadata={"help": "A response whose prompt does not fit the model: `skip` it (its row says why) or `error` (stop before any work)."})

    def __post_init__(self) -> None:
        check_length_options(self.max_prompt_tokens, self.on_too_long)
        if self.principle is None:
            self.principle = ()
        if isinstance(self.principle, str):
            self.principle = (self.principle,)
        self.principle = tuple(self.principle)
        self.backend_options = parse_option_items(self.backend_options)


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
        self.backend = open_backend(self.config.model, self.config.backend_options, self.config.cache_dir,
                                    self.config.no_cache, backend)
        self.engine = ScoringEngine(self.backend)
        self.__name__ = "drlaif"  # TRL logs reward functions by name

    def meta(self) -> dict[str, Any]:
        return {"model": self.backend.model_id, "template": self.template.name, "template_sha256": self.template.sha256,
                "constitution": self.constitution.name, "constitution_sha256": self.constitution.sha256,
                "principles": [p.id for p in self.principles], "rlaif_version": __version__}

    def rate(self, prompts: list[Any], completions: list[Any]) -> list[list[OptionResult]]:
        """Per response, one rating distribution per principle."""
        if len(prompts) != len(completions):
            raise RlaifError(f"Got {len(prompts)} prompts but {len(completions)} completions; they must pair up.")
        rendered = [text for p, c in zip(prompts, completions) for text in self.prompts_for(p, c)]
        results = self.engine.score(rendered, self.template.option_spellings())
        n = len(self.principles)
        return [results[i * n:(i + 1) * n] for i in range(len(prompts))]

    def prompts_for(self, prompt: Any, completion: Any) -> list[str]:
        """The prompts the model reads to rate one response (one a principle)."""
        return [self.template.render(conversation=format_conversation(_text(prompt)), response=_text(completion).strip(),
                                     principle=principle.text) for principle in self.principles]

    def reserve_tokens(self) -> int:
        """Tokens read after a prompt: the longest rating spelling ("10")."""
        return max(len(ids) for ids in self.engine.table(self.template.option_spellings()).ids.values())

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


def score_records(records: Iterable[dict[str, str]], config: ScoreConfig, out: str | Path, overwrite: bool = False,
                  backend: Backend | None = None, chunk: int = 16, progress: bool = True, resume: bool = True,
                  inputs: Sequence[str | Path] = (), return_rows: bool = True) -> list[dict[str, Any]] | dict[str, Any]:
    """Score `records` (prompt, response; id optional), appending Score rows to `out`; resumes what is there.

    As `label_pairs`: a `RecordStream` and `return_rows=False` for inputs of any size (the summary is
    returned), and each process scores its share under `accelerate launch` / `torchrun`."""
    records = stage_records(records, ("prompt", "response"))
    mode = "overwrite" if overwrite else ("resume" if resume else "new")
    summary: dict[str, Any] = {}
    with open_run(out, config, mode, inputs=inputs, stage="score") as run:
        todo = run.scan(records)
        if not run.idle or not run.old_meta:
            scorer = DRLAIFScorer(config, backend)
            meta = scorer.meta()
            limit = LengthLimit.for_backend(scorer.backend, config.max_prompt_tokens, config.on_too_long,
                                            scorer.reserve_tokens())
            too_long = limit.scan(run.todo(records), "id", ("prompt", "response"),
                                  lambda r: scorer.prompts_for(r["prompt"], r["response"]), what="response")
            run.start(scorer.backend.model_id, **meta, prompt_token_limit=limit.limit)

            def work(part: list[dict[str, Any]]) -> list[dict[str, Any]]:
                rows = []
                for record, results in zip(part, scorer.rate([r["prompt"] for r in part], [r["response"] for r in part])):
                    score, mean, probs, mass = score_of(results)
                    rows.append(asdict(Score(id=record["id"], prompt=record["prompt"], response=record["response"],
                                             score=score, mean_rating=mean, p_ratings=probs, option_mass=mass, meta=meta)))
                return rows

            with run.progress_bar("response", "score", disable=not progress) as bar:
                run_chunks(run, run.todo(records), work, chunk, bar, skip=too_long)
            summary = run.finish(scored_this_run=todo - len(too_long), skipped_this_run=len(too_long),
                                 responses=len(run.done))
    if not return_rows:
        return summary or run.old_meta
    rows = rows_by_key(out, (r["id"] for r in records))
    missing = [r["id"] for r in records if r["id"] not in rows]
    if missing:
        raise RlaifError(f"{len(missing)} response(s) have no score in {out}; rerun the same command to finish them.")
    return [rows[r["id"]] for r in records]
