"""SL-CAI critique -> revision chains, and the checking-as-context self-correction loop.

`critique-revision` (Bai et al. 2022, Constitutional AI): the policy answers;
each round samples one of the constitution's critique/revision pairs (seeded
by the prompt id and round), critiques its current response under it, then
revises it. `check-as-context` (Wang et al. 2024): the policy answers, checks
its answer against the sampled principle (a verdict with reasons), then answers
again with every earlier answer and check in its context.

Each prompt yields one chain record: the initial response, every round and the
final text. `export_chains` turns chains into SFT records (prompt -> final) or
preference pairs (final preferred over initial; with a judge, only the chains
whose final the judge preferred). With a judge, each round is labelled by the
feedback model (see revise_judge.py).
Few-shot examples are the CAI paper's own texts, and a small model copies them:
a critique or revision that repeats an example's words (rlaif.few_shot) is cut
where the copy starts; exports (rlaif.revise_export) never hold such text.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif import __version__
from rlaif.backends import Backend, GenerationSettings, parse_option_items
from rlaif.backends.cached import open_backend
from rlaif.constitution import Constitution, Critique, load_constitution, pair_rng
from rlaif.errors import RlaifError
from rlaif.few_shot import all_few_shot, cut_few_shot_copy, few_shot_ngrams, load_few_shot, word_ngrams  # noqa: F401
from rlaif.io import is_skip_row, read_jsonl, stage_records
from rlaif.limits import LengthLimit, check_length_options
from rlaif.label import LabelConfig
from rlaif.revise_export import EXPORTS, export_chains, export_path, preference_records, sft_records  # noqa: F401
from rlaif.revise_judge import ChainJudge, judge_stats
from rlaif.runs import run_chunks
from rlaif.shards import open_run
from rlaif.text import (
    check_decoding,
    end_of_turn_marks,
    format_conversation,
    render_prompt,
    render_request,
    resolve_prompt_format,
    trim_response,
)
from rlaif.templates import Template, load_template

MODES = ("critique-revision", "check-as-context")
CHAIN_STOPS = ("\nHuman:", "\n\nHuman", "\n\nAssistant:", "CritiqueRequest:", "RevisionRequest:", "CheckRequest:",
               "\n\nCritique:", "\n\nRevision:", "\n\nCheck:")
_VERDICT = re.compile(r"\A\W*(good|bad)\b", re.I)


@dataclass
class ReviseConfig:
    """How `rlaif revise` builds chains. Fields match the CLI flags one to one."""

    model: str = field(default="default", metadata={"help": "Policy model: `default` (embedded Gemma 3 270M), a Hugging Face id or directory, or a server URL http://HOST:PORT/v1."})
    constitution: str = field(default="cai-harmless", metadata={"help": "Constitution with critique/revision pairs (`critiques`): built-in name or YAML path."})
    mode: str = field(default="critique-revision", metadata={"help": "`critique-revision` (SL-CAI) or `check-as-context` (answer, self-check with a verdict, answer again)."})
    rounds: int = field(default=4, metadata={"help": "Critique/revision (or check/answer) rounds per prompt, a principle sampled for each."})
    few_shot: int = field(default=0, metadata={"help": "critique-revision: how many of the CAI paper's 5 few-shot critique/revision examples to prepend."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (0: greedy)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling: keep the smallest token set with this much probability."})
    max_new_tokens: int = field(default=128, metadata={"help": "Longest response, critique or check, in tokens."})
    seed: int = field(default=0, metadata={"help": "Seed of principle choice (with each prompt's id and round) and of sampling."})
    prompt_format: str = field(default="auto", metadata={"help": "`auto` (the tokenizer's chat template if it has one, else plain), `chat` or `plain`."})
    critique_template: str = field(default="cai-critique", metadata={"help": "Critique template: built-in name or .j2 path (rendered sandboxed)."})
    revision_template: str = field(default="cai-revision", metadata={"help": "Revision template: built-in name or .j2 path (rendered sandboxed)."})
    check_template: str = field(default="check-as-context", metadata={"help": "check-as-context template: built-in name or .j2 path (sandboxed)."})
    judge: str | None = field(default=None, metadata={"help": "Feedback model that labels each round (revision vs the text it revised); none: no judging."})
    judge_constitution: str | None = field(default=None, metadata={"help": "Constitution the judge labels under (default: --constitution)."})
    judge_principles: str = field(default="k", metadata={"help": "Judge principles per pair: all, one or k (as `rlaif label --principles`)."})
    judge_k: int = field(default=4, metadata={"help": "Judge principles sampled per pair with --judge-principles k."})
    judge_template: str = field(default="cai-choice", metadata={"help": "Judge template (as `rlaif label --template`)."})
    chunk_prompts: int = field(default=16, metadata={"help": "Prompts revised between two writes to the output file."})
    cache_dir: str | None = field(default=None, metadata={"help": "Directory of the raw-result cache (default $RLAIF_CACHE_DIR or ~/.cache/rlaif)."})
    no_cache: bool = field(default=False, metadata={"help": "Do not read or write the raw-result cache."})
    backend_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "The policy back end's own options (KEY=VALUE), e.g. dtype=bfloat16 (transformers), concurrency=16 (server)."})
    judge_backend_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "The judge back end's own options (KEY=VALUE)."})
    max_prompt_tokens: int | None = field(default=None, metadata={"help": "Longest prompt, in tokens (default: what the model takes, less the texts a chain adds); a longer one is skipped or refused (--on-too-long)."})
    on_too_long: str = field(default="skip", metadata={"help": "A prompt whose chain would not fit the model: `skip` it (its row says why) or `error` (stop before any work)."})

    def __post_init__(self) -> None:
        check_length_options(self.max_prompt_tokens, self.on_too_long)
        if self.mode not in MODES:
            raise RlaifError(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}.")
        if self.rounds < 1:
            raise RlaifError(f"--rounds must be at least 1, got {self.rounds}.")
        if self.temperature < 0:
            raise RlaifError(f"--temperature must be >= 0 (0: greedy), got {self.temperature}.")
        if self.few_shot < 0:
            raise RlaifError(f"--few-shot must be >= 0, got {self.few_shot}.")
        if self.few_shot and self.mode != "critique-revision":
            raise RlaifError("--few-shot examples are critique/revision examples: use them with "
                             "--mode critique-revision.")
        check_decoding(self.top_p, self.max_new_tokens, self.prompt_format)
        if self.chunk_prompts < 1:
            raise RlaifError("--chunk-prompts must be at least 1.")
        self.backend_options = parse_option_items(self.backend_options)
        self.judge_backend_options = parse_option_items(self.judge_backend_options)


def load_generation_template(name_or_path: str | Path) -> Template:
    """A generation template (no rlaif header): built-in by name, or a user's .j2 file rendered sandboxed."""
    return load_template(name_or_path, answers=False)


def choose_critique(constitution: Constitution, seed: int, prompt_id: str, round_: int) -> Critique:
    """The critique/revision pair of one round: seeded by (seed, prompt id, round), so reruns agree."""
    return pair_rng(seed, f"{prompt_id}:round{round_}").choice(constitution.critiques)


def parse_verdict(check: str) -> str:
    """`good`, `bad` or `unclear`, from the text the model wrote after 'Verdict:'."""
    match = _VERDICT.match(check)
    return match.group(1).lower() if match else "unclear"


class Reviser:
    """Holds the policy back end, constitution and templates; turns a chunk of prompts into chains."""

    def __init__(self, config: ReviseConfig, backend: Backend | None = None):
        self.config = config
        self.constitution = load_constitution(config.constitution)
        if not self.constitution.critiques:
            raise RlaifError(f"Constitution {self.constitution.name!r} has no critique/revision pairs (`critiques`), "
                             "which revise samples from: use cai-harmless or add a `critiques` list of "
                             "{id, critique, revision}.")
        names = {"check": config.check_template} if config.mode == "check-as-context" else {
            "critique": config.critique_template, "revision": config.revision_template}
        self.templates = {role: load_generation_template(name) for role, name in names.items()}
        self.few_shot = load_few_shot(config.few_shot)
        self.copy_grams = few_shot_ngrams(all_few_shot()) if self.few_shot else frozenset()
        self._check_templates()
        self.backend = open_backend(config.model, config.backend_options, config.cache_dir, config.no_cache, backend)
        self.prompt_format = resolve_prompt_format(self.backend.tokenizer, config.prompt_format)
        self.settings = GenerationSettings(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                           top_p=config.top_p, seed=config.seed,
                                           stop=CHAIN_STOPS + end_of_turn_marks(self.backend.tokenizer))

    def _check_templates(self) -> None:
        """Render once with dummy values, so a template with an unknown variable fails before the model loads."""
        values = {"few_shot": self.few_shot, "conversation": "Human: q", "response": "r", "critique_request": "c",
                  "critique": "k", "revision_request": "v", "history": [], "answer": "a", "check_request": "c"}
        for role, template in self.templates.items():
            template.render(**values, stage="check" if role == "check" else role)
            if role == "check":
                template.render(**values, stage="answer")

    def meta(self) -> dict[str, Any]:
        return {
            "model": self.backend.model_id, "prompt_format": self.prompt_format, "mode": self.config.mode,
            "constitution": self.constitution.name, "constitution_sha256": self.constitution.sha256,
            "templates": {role: {"name": t.name, "sha256": t.sha256} for role, t in self.templates.items()},
            "few_shot": len(self.few_shot), "rlaif_version": __version__,
        }

    def prompts_for(self, prompt: dict[str, str]) -> list[str]:
        """A prompt's first prompt and the skeleton of its longest later one (the round's own texts left empty:
        `reserve_tokens` counts them at --max-new-tokens each), as the policy reads them."""
        conversation = format_conversation(prompt["prompt"])
        longest = max(self.constitution.critiques, key=lambda c: len(c.critique) + len(c.revision))
        if self.config.mode == "critique-revision":
            last = self.templates["revision"].render(
                few_shot=self.few_shot, conversation=conversation, response="", critique="",
                critique_request=longest.critique, revision_request=longest.revision)
        else:
            history = [{"answer": "", "check_request": longest.critique, "check": "Verdict: "}] * self.config.rounds
            last = self.templates["check"].render(stage="answer", conversation=conversation, history=history,
                                                  answer="", check_request="")
        tokenizer = self.backend.tokenizer
        return [render_prompt(tokenizer, prompt["prompt"], self.prompt_format),
                render_request(tokenizer, last, self.prompt_format)]

    def reserve_tokens(self) -> int:
        """New tokens the longest prompt holds and is followed by: response, critique and revision; with
        check-as-context an answer and a check a round, then the last answer."""
        texts = 3 if self.config.mode == "critique-revision" else 2 * self.config.rounds + 1
        return texts * self.config.max_new_tokens

    def _generate(self, texts: list[str]) -> list[str]:
        prompts = [render_request(self.backend.tokenizer, text, self.prompt_format) for text in texts]
        return [trim_response(t, CHAIN_STOPS) for t in self.backend.generate(prompts, [self.settings] * len(prompts))]

    def revise(self, prompts: list[dict[str, str]]) -> list[dict[str, Any]]:
        """One chain record for each prompt (dicts with id, prompt)."""
        rendered = [render_prompt(self.backend.tokenizer, p["prompt"], self.prompt_format) for p in prompts]
        initial = [trim_response(t, CHAIN_STOPS) for t in self.backend.generate(rendered, [self.settings] * len(rendered))]
        states = [{"id": p["id"], "prompt": p["prompt"], "conversation": format_conversation(p["prompt"]),
                   "current": text, "initial": text, "rounds": [], "history": []} for p, text in zip(prompts, initial)]
        step = self._critique_round if self.config.mode == "critique-revision" else self._check_round
        for round_ in range(1, self.config.rounds + 1):
            chosen = [choose_critique(self.constitution, self.config.seed, s["id"], round_) for s in states]
            step(states, round_, chosen)
        return [{"id": s["id"], "prompt": s["prompt"], "mode": self.config.mode, "initial": s["initial"],
                 "rounds": s["rounds"], "final": s["current"]} for s in states]

    def _without_copies(self, texts: list[str], states: list[dict]) -> tuple[list[str], list[bool]]:
        """Each text cut where it starts copying a few-shot example (see `cut_few_shot_copy`), and which were."""
        cuts = [cut_few_shot_copy(t, self.copy_grams, word_ngrams(s["conversation"] + "\n" + s["initial"]))
                for t, s in zip(texts, states)]
        return [text for text, _ in cuts], [copied for _, copied in cuts]

    def _critique_round(self, states: list[dict], round_: int, chosen: list[Critique]) -> None:
        base = [{"few_shot": self.few_shot, "conversation": s["conversation"], "response": s["current"],
                 "critique_request": c.critique} for s, c in zip(states, chosen)]
        critiques, copied_critique = self._without_copies(
            self._generate([self.templates["critique"].render(**b) for b in base]), states)
        revisions, copied_revision = self._without_copies(
            self._generate([self.templates["revision"].render(**b, critique=k, revision_request=c.revision)
                            for b, k, c in zip(base, critiques, chosen)]), states)
        for state, critique, text, principle, *copied in zip(states, critiques, revisions, chosen, copied_critique,
                                                             copied_revision):
            new = text or state["current"]  # an empty revision keeps the text it was meant to revise
            state["rounds"].append({"round": round_, "principle": principle.id, "critique": critique,
                                    "revision": new, "revision_empty": not text,
                                    **({"few_shot_copy_cut": True} if any(copied) else {})})
            state["current"] = new

    def _check_round(self, states: list[dict], round_: int, chosen: list[Critique]) -> None:
        template = self.templates["check"]
        checks = self._generate([template.render(stage="check", conversation=s["conversation"], history=s["history"],
                                                 answer=s["current"], check_request=c.critique)
                                 for s, c in zip(states, chosen)])
        for state, check, principle in zip(states, checks, chosen):
            state["history"].append({"answer": state["current"], "check_request": principle.critique,
                                     "check": f"Verdict: {check}"})
        answers = self._generate([template.render(stage="answer", conversation=s["conversation"], history=s["history"],
                                                  answer="", check_request="") for s in states])
        for state, check, text, principle in zip(states, checks, answers, chosen):
            new = text or state["current"]
            state["rounds"].append({"round": round_, "principle": principle.id, "check": f"Verdict: {check}",
                                    "check_empty": not check.strip(), "verdict": parse_verdict(check),
                                    "revision": new, "revision_empty": not text})
            state["current"] = new


def judge_label_config(config: ReviseConfig) -> LabelConfig:
    """The labelling settings of the judge, from revise's --judge-* options."""
    return LabelConfig(model=config.judge or "default", constitution=config.judge_constitution or config.constitution,
                       principles=config.judge_principles, k=config.judge_k, template=config.judge_template,
                       seed=config.seed, cache_dir=config.cache_dir, no_cache=config.no_cache,
                       backend_options=config.judge_backend_options)


def revise_prompts(prompts: Iterable[dict[str, str]], config: ReviseConfig, out: str | Path, overwrite: bool = False,
                   backend: Backend | None = None, judge_backend: Backend | None = None,
                   progress: bool = True, resume: bool = True, inputs: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Build a chain for each prompt (prompt, id optional), appending to `out` and resuming by prompt id;
    returns the meta summary. `prompts` may be a `rlaif.io.RecordStream` (any size, read in batches);
    under `accelerate launch` / `torchrun` each process revises its share and rank 0 merges them."""
    prompts = stage_records(prompts, ("prompt",))
    if isinstance(prompts, list) and not prompts:
        raise RlaifError("No prompts given: pass a file with at least one {\"prompt\": ...} record.")
    mode = "overwrite" if overwrite else ("resume" if resume else "new")
    with open_run(out, config, mode, inputs=inputs, stage="revise") as run:
        todo = run.scan(prompts)
        if run.idle and run.old_meta.get("status") == "done":
            return {**run.old_meta, "prompts_this_run": 0, "seconds_this_run": 0.0}
        reviser = Reviser(config, backend)
        if config.judge and judge_backend is None and config.judge == config.model \
                and config.judge_backend_options == config.backend_options:
            judge_backend = reviser.backend
        judge = ChainJudge(judge_label_config(config), judge_backend) if config.judge else None
        limit = LengthLimit.for_backend(reviser.backend, config.max_prompt_tokens, config.on_too_long,
                                        reviser.reserve_tokens())
        too_long = limit.scan(run.todo(prompts), "id", ("prompt",), reviser.prompts_for, what="prompt")
        run.start(reviser.backend.model_id, **reviser.meta(), **({"judge": judge.meta()} if judge else {}),
                  prompt_token_limit=limit.limit, prompts=run.total)

        def work(chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
            chains = reviser.revise(chunk)
            if judge:
                judge.judge(chains)
            return chains

        with run.progress_bar("prompt", "revise", disable=not progress) as bar:
            run_chunks(run, run.todo(prompts), work, config.chunk_prompts, bar, skip=too_long)
        return run.finish(lambda path: chain_file_facts(path, judged=judge is not None),
                          prompts_this_run=todo - len(too_long), skipped_this_run=len(too_long))


def chain_file_facts(path: Path, judged: bool) -> dict[str, Any]:
    """The counts of a finished chains file, read as a stream (the judge's stats keep only its numbers)."""
    counts = chain_counts(row for row in read_jsonl(path) if not is_skip_row(row))
    if judged:
        counts["judge_stats"] = judge_stats([{"p_final_better": c["p_final_better"],
                                              "rounds": [{"p_better": r["p_better"]} for r in c["rounds"]]}
                                             for c in read_jsonl(path) if "p_final_better" in c])
    return counts


def chain_counts(chains: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Chains in the file, empty revisions (kept the previous text), unchanged finals, few-shot copies cut,
    check verdicts and empty checks (nothing after "Verdict:"); one pass over `chains`."""
    tally: Counter = Counter()
    verdicts: Counter = Counter()
    for chain in chains:
        tally["chains_in_file"] += 1
        tally["final_same_as_initial"] += chain["final"].strip() == chain["initial"].strip()
        for r in chain["rounds"]:
            tally["rounds"] += 1
            tally["empty_revisions"] += bool(r["revision_empty"])
            tally["few_shot_copies_cut"] += bool(r.get("few_shot_copy_cut"))
            if "verdict" in r:
                verdicts[r["verdict"]] += 1
                tally["empty_checks"] += bool(r.get("check_empty",
                                                    not r.get("check", "").removeprefix("Verdict:").strip()))
    counts = {key: tally[key] for key in ("chains_in_file", "rounds", "empty_revisions", "final_same_as_initial",
                                          "few_shot_copies_cut")}
    if verdicts:
        counts["verdicts"] = dict(sorted(verdicts.items()))
        counts["empty_checks"] = tally["empty_checks"]
    return counts
