"""RLAIF pairwise labels: principles x orders -> one soft label per pair.

For each pair and each principle used, the feedback model sees the pair twice,
A first then B first. q_ab is P(option A) with A first; q_ba is the
probability of the slot that holds A when B is first. Under one principle
p_a = (q_ab + q_ba) / 2, which cancels position bias; over principles p_a is
the mean. With chain-of-thought feedback the model first writes a rationale,
the answer stub is appended and the options scored; p_a is then clamped into
[clamp_low, clamp_high] (the RLAIF paper's 40-60%).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlaif import __version__
from rlaif.backends import Backend, GenerationSettings, parse_option_items
from rlaif.backends.cached import open_backend
from rlaif.constitution import (
    Constitution,
    Principle,
    choose_principles,
    load_constitution,
)
from rlaif.errors import RlaifError
from rlaif.io import stage_records
from rlaif.limits import LengthLimit, check_length_options
from rlaif.templates import Template, load_template
from rlaif.runs import rows_by_key, run_chunks
from rlaif.shards import open_run
from rlaif.text import RATIONALE_STOPS, format_conversation, trim_rationale
from rlaif.records import Label
from rlaif.options import ScoringEngine

PAIR_FIELDS = ("prompt", "response_a", "response_b")

log = logging.getLogger(__name__)


@dataclass
class LabelConfig:
    """How `rlaif label` judges pairs. Fields match the CLI flags one to one."""

    model: str = field(default="default", metadata={"help": "Feedback model: `default` (embedded Gemma 3 270M), a Hugging Face id or directory, or a server URL http://HOST:PORT/v1."})
    constitution: str = field(default="cai-harmless", metadata={"help": "Built-in constitution name or path of a YAML file."})
    principles: str = field(default="k", metadata={"help": "Principles per pair: `all`, `one` (one sampled per pair, as in CAI) or `k` (k sampled)."})
    k: int = field(default=4, metadata={"help": "How many principles to sample per pair with --principles k."})
    only: tuple[str, ...] = field(default=(), metadata={"help": "Restrict to these principle ids."})
    template: str = field(default="cai-choice", metadata={"help": "Built-in template name or path of a .j2 file (rendered sandboxed)."})
    few_shot: int = field(default=0, metadata={"help": "Number of the constitution's few-shot examples to prepend."})
    cot: bool = field(default=False, metadata={"help": "Chain-of-thought feedback: generate a rationale, then score; clamp p_a."})
    clamp_low: float = field(default=0.4, metadata={"help": "CoT mode: lower bound of p_a."})
    clamp_high: float = field(default=0.6, metadata={"help": "CoT mode: upper bound of p_a."})
    max_rationale_tokens: int = field(default=128, metadata={"help": "CoT mode: longest rationale generated."})
    seed: int = field(default=0, metadata={"help": "Seed for principle sampling (combined with each pair's id)."})
    chunk_pairs: int = field(default=16, metadata={"help": "Pairs scored between two writes to the output file."})
    cache_dir: str | None = field(default=None, metadata={"help": "Directory of the raw-result cache (default $RLAIF_CACHE_DIR or ~/.cache/rlaif)."})
    no_cache: bool = field(default=False, metadata={"help": "Do not read or write the raw-result cache."})
    backend_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "The back end's own options (KEY=VALUE), e.g. dtype=bfloat16 or batch_tokens=4096 (transformers), concurrency=16 (server)."})
    max_prompt_tokens: int | None = field(default=None, metadata={"help": "Longest prompt, in tokens (default: what the model takes); a pair whose prompt is longer is skipped or refused (--on-too-long)."})
    on_too_long: str = field(default="skip", metadata={"help": "A pair whose prompt does not fit the model: `skip` it (its row says why) or `error` (stop before any work)."})

    def __post_init__(self) -> None:
        check_length_options(self.max_prompt_tokens, self.on_too_long)
        if self.principles not in ("all", "one", "k"):
            raise RlaifError(f"--principles must be all, one or k, not {self.principles!r}.")
        if not 0.0 <= self.clamp_low <= 0.5 <= self.clamp_high <= 1.0:
            raise RlaifError(f"Clamp bounds must satisfy 0 <= low <= 0.5 <= high <= 1, got [{self.clamp_low}, {self.clamp_high}].")
        if self.few_shot < 0 or self.chunk_pairs < 1:
            raise RlaifError("--few-shot must be >= 0 and --chunk-pairs >= 1.")
        if self.principles == "k" and self.k < 1:
            raise RlaifError(f"--k must be at least 1, got {self.k}.")
        self.only = tuple(self.only)
        self.backend_options = parse_option_items(self.backend_options)


class Labeller:
    """Holds the loaded constitution, template and engine; labels pairs in chunks."""

    def __init__(self, config: LabelConfig, backend: Backend | None = None):
        self.config = config
        self.constitution: Constitution = load_constitution(config.constitution)
        for pid in config.only:
            self.constitution.get(pid)  # unknown ids fail before any model loads
        default_template = "cai-choice-cot" if config.cot and config.template == "cai-choice" else config.template
        self.template: Template = load_template(default_template)
        if config.cot and not self.template.answer_stub:
            raise RlaifError(f"--cot needs a template with an `answer_stub` in its header; {self.template.name!r} has none "
                             "(use cai-choice-cot).")
        if len(self.template.options) != 2:
            raise RlaifError(f"Template {self.template.name!r} has {len(self.template.options)} options; pairwise labels need 2.")
        self._check_template()
        examples = self.constitution.cot_few_shot if config.cot else self.constitution.few_shot
        if config.few_shot > len(examples):
            kind = "chain-of-thought few-shot" if config.cot else "few-shot"
            raise RlaifError(f"--few-shot {config.few_shot} asks for more examples than constitution "
                             f"{self.constitution.name!r} has ({len(examples)} {kind}); use at most {len(examples)}.")
        pool = len(config.only) if config.only else len(self.constitution.principles)
        if config.principles == "k" and config.k > pool:
            given = "given with --only" if config.only else f"of {self.constitution.name!r}"
            raise RlaifError(f"--k {config.k} is more than the {pool} principles {given}: use --k {pool} or "
                             "--principles all.")
        self.backend = open_backend(config.model, config.backend_options, config.cache_dir, config.no_cache, backend)
        self.engine = ScoringEngine(self.backend)
        self.engine.table(self.template.option_spellings())  # a tokenizer that cannot spell the options fails now

    def _check_template(self) -> None:
        """Render once with dummy values so a template with an unknown variable fails before the model loads."""
        self.template.render(conversation="c", principle="p", response_a="a", response_b="b", few_shot=[])

    def prompts_for(self, pair: dict[str, str]) -> list[str]:
        """Every prompt the model reads for one pair (its principles, both orders), as `label` renders them."""
        chosen = choose_principles(self.constitution, self.config.principles, pair["id"], self.config.seed,
                                   self.config.k, list(self.config.only))
        return [self._render(pair, principle, swapped) for principle in chosen for swapped in (False, True)]

    def reserve_tokens(self) -> int:
        """Tokens the model reads after a prompt: the longest answer spelling (with CoT: rationale and stub first)."""
        spelling = max(len(ids) for ids in self.engine.table(self.template.option_spellings()).ids.values())
        if not self.config.cot:
            return spelling
        stub = len(self.backend.tokenizer.encode(" " + self.template.answer_stub, add_special_tokens=False))
        return self.config.max_rationale_tokens + stub + spelling + 1

    def meta(self) -> dict[str, Any]:
        return {
            "model": self.backend.model_id, "template": self.template.name, "template_sha256": self.template.sha256,
            "constitution": self.constitution.name, "constitution_sha256": self.constitution.sha256,
            "principles": self.config.principles, "cot": self.config.cot, "rlaif_version": __version__,
        }

    def label(self, pairs: list[dict[str, str]]) -> list[Label]:
        """Labels for `pairs` (dicts with id, prompt, response_a, response_b)."""
        jobs = []  # (pair index, principle, swapped)
        for index, pair in enumerate(pairs):
            chosen = choose_principles(self.constitution, self.config.principles, pair["id"], self.config.seed,
                                       self.config.k, list(self.config.only))
            jobs += [(index, principle, swapped) for principle in chosen for swapped in (False, True)]
        prompts = [self._render(pairs[i], principle, swapped) for i, principle, swapped in jobs]
        rationales: list[str] = [""] * len(prompts)
        if self.config.cot:
            settings = GenerationSettings(max_new_tokens=self.config.max_rationale_tokens, seed=self.config.seed,
                                          stop=RATIONALE_STOPS)
            rationales = [trim_rationale(t) for t in self.backend.generate(prompts, [settings] * len(prompts))]
            prompts = [p + " " + r + self.template.answer_stub for p, r in zip(prompts, rationales)]
        results = self.engine.score(prompts, self.template.option_spellings())
        first, second = self.template.options
        per_pair: dict[int, dict[str, list]] = {}
        for (index, principle, swapped), result, rationale in zip(jobs, results, rationales):
            slot = per_pair.setdefault(index, {}).setdefault(principle.id, [None, None, [], ["", ""]])
            # With B shown first, the slot holding A is the second option.
            slot[int(swapped)] = result.probs[second] if swapped else result.probs[first]
            slot[2].append(result.mass)
            slot[3][int(swapped)] = rationale
        return [self._record(pairs[i], per_pair[i]) for i in range(len(pairs))]

    def _render(self, pair: dict[str, str], principle: Principle, swapped: bool) -> str:
        first, second = (pair["response_b"], pair["response_a"]) if swapped else (pair["response_a"], pair["response_b"])
        examples = self.constitution.cot_few_shot if self.config.cot else self.constitution.few_shot
        few = [{**ex, "principle": principle.text} for ex in examples[: self.config.few_shot]]
        return self.template.render(conversation=format_conversation(pair["prompt"]), principle=principle.text,
                                    response_a=first, response_b=second, few_shot=few)

    def _record(self, pair: dict[str, str], by: dict[str, list]) -> Label:
        orders = {pid: [v[0], v[1]] for pid, v in by.items()}
        by_principle = {pid: (ab + ba) / 2 for pid, (ab, ba) in orders.items()}
        p_a = sum(by_principle.values()) / len(by_principle)
        if self.config.cot:
            p_a = min(max(p_a, self.config.clamp_low), self.config.clamp_high)
        masses = [m for v in by.values() for m in v[2]]
        a_wins = p_a >= 0.5
        return Label(
            id=pair["id"], prompt=pair["prompt"], response_a=pair["response_a"], response_b=pair["response_b"],
            p_a=p_a, p_a_ab=sum(o[0] for o in orders.values()) / len(orders),
            p_a_ba=sum(o[1] for o in orders.values()) / len(orders), by_principle=by_principle,
            by_principle_orders=orders, option_mass=sum(masses) / len(masses),
            chosen=pair["response_a"] if a_wins else pair["response_b"],
            rejected=pair["response_b"] if a_wins else pair["response_a"],
            rationale={pid: v[3] for pid, v in by.items()} if self.config.cot else None,
            meta=self.meta(),
        )


def label_row(label: Label, pair: dict[str, Any]) -> dict[str, Any]:
    """A label as written: the Label's fields, plus `human` ("a"/"b") when the pair came from a human preference."""
    row = asdict(label)
    if pair.get("human") in ("a", "b"):
        row["human"] = pair["human"]
    return row


def label_pairs(pairs: Iterable[dict[str, str]], config: LabelConfig, out: str | Path, overwrite: bool = False,
                backend: Backend | None = None, progress: bool = True, resume: bool = True,
                inputs: Sequence[str | Path] = (), return_rows: bool = True) -> list[dict[str, Any]] | dict[str, Any]:
    """Label `pairs` (id optional), appending Label rows to `out` and resuming what is already there.

    Returns the label rows for `pairs`, in input order. A run killed at any point
    and started again finishes without recomputing cached results and without
    duplicate or missing records. `resume=False` refuses an existing `out`;
    `inputs`: the files `pairs` came from (an output that is one of them is refused).

    For inputs of any size pass a `rlaif.io.RecordStream` (`stream_records(path, ...)`) and
    `return_rows=False`: the input is read in batches, nothing of it or of the output is held,
    and the summary (OUT's meta) is returned instead of the rows. Under `accelerate launch` or
    `torchrun` each process labels its share and rank 0 merges them into `out` (rlaif.shards).
    """
    pairs = stage_records(pairs, PAIR_FIELDS)
    mode = "overwrite" if overwrite else ("resume" if resume else "new")
    with open_run(out, config, mode, inputs=inputs, stage="label") as run:
        todo = run.scan(pairs)  # this process's pairs left; also counts `run.orphans` (ids that left the input)
        started = time.time()
        labeller = Labeller(config, backend) if not run.idle or not run.old_meta else None
        if labeller:
            limit = LengthLimit.for_backend(labeller.backend, config.max_prompt_tokens, config.on_too_long,
                                            labeller.reserve_tokens())
            too_long = limit.scan(run.todo(pairs), "id", PAIR_FIELDS, labeller.prompts_for, what="pair")
            run.start(labeller.backend.model_id, **labeller.meta(), pairs_in_input=run.total,
                      prompt_token_limit=limit.limit)
            loaded = time.time()
            with run.progress_bar("pair", "label", disable=not progress) as bar:
                run_chunks(run, run.todo(pairs),
                           lambda chunk: [label_row(x, pair) for x, pair in zip(labeller.label(chunk), chunk)],
                           config.chunk_pairs, bar, skip=too_long)
            cache = labeller.backend.cache
            meta = run.finish(pairs=len(run.done), labelled_this_run=todo - len(too_long),
                              skipped_this_run=len(too_long), seconds_this_run=round(time.time() - loaded, 2),
                              model_load_seconds=round(loaded - started, 2), cache_hits=cache.hits,
                              cache_misses=cache.misses)
        else:  # all labelled already: the meta must show this run's figures, not the last run's
            meta = run.finish(labelled_this_run=0, skipped_this_run=0, seconds_this_run=0.0, model_load_seconds=0.0,
                              cache_hits=0, cache_misses=0)
    if not return_rows:
        return meta
    rows = rows_by_key(out, (p["id"] for p in pairs))
    missing = [p["id"] for p in pairs if p["id"] not in rows]
    if missing:
        raise RlaifError(f"{len(missing)} pair(s) have no label in {out}; rerun the same command to finish them.")
    return [rows[p["id"]] for p in pairs]
