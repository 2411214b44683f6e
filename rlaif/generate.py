"""Response pairs from a policy model: n samples a prompt, paired, deduplicated (the input of `rlaif label`).

Sample i of a prompt is decoded with seed `seed * 1000003 + i`, and the back end
seeds each row from (that seed, the prompt), so sample i is the same text
whatever n, batch size or resume point. The engine caches it by (model, prompt,
decoding settings, sample index): a rerun costs nothing and a larger n samples
only the new indices.

Prompts go through the tokenizer's chat template when it has one (`auto`),
else the CAI plain-text format "Human: ...\n\nAssistant:"; the output's meta
says which.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif import __version__
from rlaif.backends import Backend, GenerationSettings, parse_option_items
from rlaif.backends.cached import open_backend
from rlaif.cache import ResultCache
from rlaif.errors import RlaifError
from rlaif.io import is_skip_row, read_jsonl, stage_records
from rlaif.limits import LengthLimit, check_length_options
from rlaif.runs import run_chunks
from rlaif.shards import open_run
from rlaif.text import check_decoding, render_prompt, resolve_prompt_format, response_stops, trim_response

SEED_STRIDE = 1000003


@dataclass
class GenerateConfig:
    """How `rlaif generate` samples and pairs responses. Fields match the CLI flags one to one."""

    model: str = field(default="default", metadata={"help": "Policy model: `default` (embedded Gemma 3 270M), a Hugging Face id or directory, or a server URL http://HOST:PORT/v1."})
    n: int = field(default=2, metadata={"help": "Responses sampled per prompt (at least 2)."})
    pairs: str = field(default="adjacent", metadata={"help": "Pairing: `adjacent` (samples 0-1, 2-3, ...; each used once) or `all` (every two distinct samples)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (> 0: greedy decoding would give n identical responses)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling: keep the smallest token set with this much probability."})
    max_new_tokens: int = field(default=128, metadata={"help": "Longest response, in tokens."})
    seed: int = field(default=0, metadata={"help": "Sampling seed; sample i uses seed * 1000003 + i, so a larger --n keeps the first samples."})
    prompt_format: str = field(default="auto", metadata={"help": "`auto` (the tokenizer's chat template if it has one, else plain), `chat` or `plain` (Human: ...\\n\\nAssistant:)."})
    chunk_prompts: int = field(default=16, metadata={"help": "Prompts sampled between two writes to the output file."})
    cache_dir: str | None = field(default=None, metadata={"help": "Directory of the raw-result cache (default $RLAIF_CACHE_DIR or ~/.cache/rlaif)."})
    no_cache: bool = field(default=False, metadata={"help": "Do not read or write the raw-result cache."})
    backend_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "The back end's own options (KEY=VALUE), e.g. dtype=bfloat16, batch_tokens=4096 (transformers), concurrency=16 (server)."})
    max_prompt_tokens: int | None = field(default=None, metadata={"help": "Longest prompt, in tokens (default: the model's context less --max-new-tokens); a longer prompt is skipped or refused (--on-too-long)."})
    on_too_long: str = field(default="skip", metadata={"help": "A prompt that does not fit the model: `skip` it (its row says why) or `error` (stop before any work)."})

    def __post_init__(self) -> None:
        check_length_options(self.max_prompt_tokens, self.on_too_long)
        if self.n < 2:
            raise RlaifError(f"--n {self.n} gives no pairs: sample at least 2 responses a prompt (--n 2).")
        if self.pairs not in ("adjacent", "all"):
            raise RlaifError(f"--pairs must be adjacent or all, not {self.pairs!r}.")
        if self.pairs == "adjacent" and self.n % 2:
            raise RlaifError(f"--n {self.n} with --pairs adjacent leaves the last sample unpaired: "
                             "use an even --n or --pairs all.")
        if self.temperature <= 0:
            raise RlaifError("--temperature must be > 0: greedy decoding gives the same response every time, "
                             "so every pair would be dropped as identical (try --temperature 1).")
        check_decoding(self.top_p, self.max_new_tokens, self.prompt_format)
        if self.chunk_prompts < 1:
            raise RlaifError("--chunk-prompts must be at least 1.")
        self.backend_options = parse_option_items(self.backend_options)


def sample_settings(config: GenerateConfig, index: int, stop: tuple[str, ...] = ()) -> GenerationSettings:
    """Decoding settings of sample `index`: its own seed, so it does not depend on n; `stop` ends a response."""
    return GenerationSettings(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                              top_p=config.top_p, seed=config.seed * SEED_STRIDE + index, stop=stop)


# -- pairs ----------------------------------------------------------------------------------------------------------


def form_pairs(prompt: dict[str, str], responses: list[str], mode: str) -> tuple[list[dict[str, Any]], Counter]:
    """Pairs of one prompt's samples, and why the others were dropped.

    `adjacent`: (0, 1), (2, 3), ...; `all`: every (i, j) with i < j. A pair is dropped when a
    response is empty (`empty`), both are the same text (`identical`), or the same two texts
    already formed a pair of this prompt (`duplicate`).
    """
    n = len(responses)
    indices = [(i, i + 1) for i in range(0, n - 1, 2)] if mode == "adjacent" else itertools.combinations(range(n), 2)
    pairs: list[dict[str, Any]] = []
    dropped: Counter = Counter()
    seen: set[frozenset[str]] = set()
    for i, j in indices:
        a, b = responses[i], responses[j]
        if not a.strip() or not b.strip():
            dropped["empty"] += 1
        elif a.strip() == b.strip():
            dropped["identical"] += 1
        elif frozenset((a.strip(), b.strip())) in seen:
            dropped["duplicate"] += 1
        else:
            seen.add(frozenset((a.strip(), b.strip())))
            pairs.append({"id": f"{prompt['id']}-s{i}-s{j}", "prompt": prompt["prompt"], "response_a": a,
                          "response_b": b, "prompt_id": prompt["id"], "samples": [i, j]})
    return pairs, dropped


class PairGenerator:
    """Holds the policy back end and cache; samples and pairs prompts chunk by chunk."""

    def __init__(self, config: GenerateConfig, backend: Backend | None = None):
        self.config = config
        self.backend = open_backend(config.model, config.backend_options, config.cache_dir, config.no_cache, backend)
        self.prompt_format = resolve_prompt_format(self.backend.tokenizer, config.prompt_format)
        self.stops = response_stops(self.backend.tokenizer)  # a new speaker turn or the end-of-turn token

    def meta(self) -> dict[str, Any]:
        return {"model": self.backend.model_id, "prompt_format": self.prompt_format, "stops": list(self.stops),
                "rlaif_version": __version__}

    def samples(self, prompts: list[dict[str, str]]) -> list[list[str]]:
        """n trimmed responses for each prompt, from ONE back-end call for the whole chunk (prompts x samples):
        the transformers back end decodes them in shared batches, a server back end puts them in flight together."""
        rendered = [render_prompt(self.backend.tokenizer, p["prompt"], self.prompt_format) for p in prompts]
        per_index = [sample_settings(self.config, i, self.stops) for i in range(self.config.n)]
        texts = self.backend.generate([text for text in rendered for _ in per_index], per_index * len(rendered))
        plain = self.prompt_format == "plain"  # a base model continuing a transcript invents named speakers
        n = self.config.n
        return [[trim_response(text, self.stops, named_turns=plain) for text in texts[k * n:(k + 1) * n]]
                for k in range(len(prompts))]

    def pairs(self, prompts: list[dict[str, str]]) -> tuple[list[dict[str, Any]], Counter]:
        rows: list[dict[str, Any]] = []
        dropped: Counter = Counter()
        for prompt, responses in zip(prompts, self.samples(prompts)):
            pairs, why = form_pairs(prompt, responses, self.config.pairs)
            rows += pairs
            dropped += why
        return rows, dropped


# -- resumable output -----------------------------------------------------------------------------------------------


def generate_pairs(prompts: Iterable[dict[str, str]], config: GenerateConfig, out: str | Path, overwrite: bool = False,
                   backend: Backend | None = None, progress: bool = True, resume: bool = True,
                   inputs: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Sample, pair and append pairs for `prompts` (dicts with prompt, id optional) to `out`, resuming by prompt id.

    Returns the summary also written to `<out>.meta.json`: pairs written, drops by reason, samples drawn
    from the model vs the cache. Counts cover the prompts done in this run. `prompts` may be a
    `rlaif.io.RecordStream` (any size, read in batches); under `accelerate launch` / `torchrun`
    each process samples its share of the prompts and rank 0 merges them (rlaif.shards).
    """
    prompts = stage_records(prompts, ("prompt",))
    if isinstance(prompts, list) and not prompts:
        raise RlaifError("No prompts given: pass a file with at least one {\"prompt\": ...} record.")
    mode = "overwrite" if overwrite else ("resume" if resume else "new")
    with open_run(out, config, mode, inputs=inputs, key="prompt_id", group_key="prompt_id", stage="generate") as run:
        todo = run.scan(prompts)
        if run.idle and run.old_meta.get("status") == "done":
            return {**run.old_meta, "prompts_this_run": 0, "pairs_this_run": 0, "dropped_identical": 0,
                    "dropped_duplicate": 0, "dropped_empty": 0, "samples_from_cache": 0, "samples_generated": 0,
                    "seconds_this_run": 0.0}
        generator = PairGenerator(config, backend)
        limit = LengthLimit.for_backend(generator.backend, config.max_prompt_tokens, config.on_too_long,
                                        config.max_new_tokens)
        too_long = limit.scan(run.todo(prompts), "id", ("prompt",), lambda p: [
            render_prompt(generator.backend.tokenizer, p["prompt"], generator.prompt_format)], what="prompt")
        run.start(generator.backend.model_id, **generator.meta(), prompt_token_limit=limit.limit, prompts=run.total)
        written, dropped = 0, Counter()

        def work(chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
            nonlocal written, dropped
            rows, why = generator.pairs(chunk)
            written, dropped = written + len(rows), dropped + why
            return rows

        with run.progress_bar("prompt", "generate", disable=not progress) as bar:
            run_chunks(run, ({**p, "prompt_id": p["id"]} for p in run.todo(prompts)), work, config.chunk_prompts,
                       bar, skip=too_long)
        cache = generator.backend.cache
        return run.finish(
            lambda path: {"pairs_in_file": sum(not is_skip_row(row) for row in read_jsonl(path))},
            prompts_this_run=todo - len(too_long), skipped_this_run=len(too_long), pairs_this_run=written,
            dropped_identical=dropped["identical"], dropped_duplicate=dropped["duplicate"],
            dropped_empty=dropped["empty"], samples_from_cache=cache.hits,
            samples_generated=cache.misses if isinstance(cache, ResultCache) else (todo - len(too_long)) * config.n,
        )
