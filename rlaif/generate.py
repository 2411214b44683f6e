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
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rlaif import __version__
from rlaif.backends import Backend, GenerationSettings, load_backend
from rlaif.backends.default import cache_root
from rlaif.cache import NullCache, ResultCache
from rlaif.errors import RlaifError
from rlaif.io import (
    RecordWriter,
    chunks,
    config_digest,
    meta_path,
    prepare_output,
    read_jsonl,
    read_meta,
    write_json,
)
from rlaif.label import format_conversation
from rlaif.scoring import ScoringEngine

SEED_STRIDE = 1000003
PROMPT_FORMATS = ("auto", "chat", "plain")
STOPS = ("\nHuman:", "\n\nHuman", "\nH:")
_TURN = re.compile(r"(?:\A|\n\n)(Human|Assistant):[ \t]?")


@dataclass
class GenerateConfig:
    """How `rlaif generate` samples and pairs responses. Fields match the CLI flags one to one."""

    model: str = field(default="default", metadata={"help": "Policy model: `default` (embedded Gemma 3 270M), a Hugging Face id or a local directory."})
    n: int = field(default=2, metadata={"help": "Responses sampled per prompt (at least 2)."})
    pairs: str = field(default="adjacent", metadata={"help": "Pairing: `adjacent` (samples 0-1, 2-3, ...; each used once) or `all` (every two distinct samples)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (> 0: greedy decoding would give n identical responses)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling: keep the smallest token set with this much probability."})
    max_new_tokens: int = field(default=128, metadata={"help": "Longest response, in tokens."})
    seed: int = field(default=0, metadata={"help": "Sampling seed; sample i uses seed * 1000003 + i, so a larger --n keeps the first samples."})
    prompt_format: str = field(default="auto", metadata={"help": "`auto` (the tokenizer's chat template if it has one, else plain), `chat` or `plain` (Human: ...\\n\\nAssistant:)."})
    batch_tokens: int = field(default=8192, metadata={"help": "Token budget of one batch; generation runs batch_tokens // 512 prompts at a time."})
    chunk_prompts: int = field(default=16, metadata={"help": "Prompts sampled between two writes to the output file."})
    cache_dir: str | None = field(default=None, metadata={"help": "Directory of the raw-result cache (default $RLAIF_CACHE_DIR or ~/.cache/rlaif)."})
    no_cache: bool = field(default=False, metadata={"help": "Do not read or write the raw-result cache."})
    dtype: str = field(default="float32", metadata={"help": "Model weights dtype: float32, bfloat16 or float16."})

    def __post_init__(self) -> None:
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
        if self.batch_tokens < 1 or self.chunk_prompts < 1:
            raise RlaifError("--batch-tokens and --chunk-prompts must be at least 1.")


def check_decoding(top_p: float, max_new_tokens: int, prompt_format: str) -> None:
    if not 0.0 < top_p <= 1.0:
        raise RlaifError(f"--top-p must be in (0, 1], got {top_p}.")
    if max_new_tokens < 1:
        raise RlaifError(f"--max-new-tokens must be at least 1, got {max_new_tokens}.")
    if prompt_format not in PROMPT_FORMATS:
        raise RlaifError(f"--prompt-format must be one of {', '.join(PROMPT_FORMATS)}, not {prompt_format!r}.")


# -- prompts in, text out -------------------------------------------------------------------------------------------


def resolve_prompt_format(tokenizer: Any, wanted: str) -> str:
    """`chat` or `plain`: `auto` picks chat when the tokenizer has a chat template."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if wanted == "chat" and not has_template:
        raise RlaifError("--prompt-format chat needs a tokenizer with a chat template; this model has none "
                         "(use --prompt-format plain or auto).")
    if wanted == "auto":
        return "chat" if has_template else "plain"
    return wanted


def to_messages(prompt: str) -> list[dict[str, str]]:
    """Chat messages from a prompt: CAI-style 'Human: ...\\n\\nAssistant: ...' turns, or one user message."""
    text = format_conversation(prompt)
    parts = _TURN.split(text)[1:]  # [role, content, role, content, ...]
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[role], "content": content.strip()} for role, content in zip(parts[::2], parts[1::2])]


def render_prompt(tokenizer: Any, prompt: str, fmt: str) -> str:
    """The text the policy continues: chat template with a generation prompt, or 'Human: ...\\n\\nAssistant:'."""
    if fmt == "chat":
        return tokenizer.apply_chat_template(to_messages(prompt), tokenize=False, add_generation_prompt=True)
    return format_conversation(prompt) + "\n\nAssistant:"


def render_request(tokenizer: Any, text: str, fmt: str) -> str:
    """A rendered instruction (critique, revision, check) as the policy reads it: one user turn in chat format."""
    if fmt == "chat":
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


def trim_response(text: str, stops: tuple[str, ...] = STOPS) -> str:
    """The response up to where the model starts the next turn."""
    for stop in stops:
        text = text.split(stop)[0]
    return text.strip()


def sample_settings(config: GenerateConfig, index: int) -> GenerationSettings:
    """Decoding settings of sample `index`: its own seed, so it does not depend on n."""
    return GenerationSettings(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                              top_p=config.top_p, seed=config.seed * SEED_STRIDE + index)


def open_engine(backend: Backend, cache_dir: str | None, no_cache: bool) -> ScoringEngine:
    cache = NullCache() if no_cache else ResultCache(Path(cache_dir or cache_root()) / "results.sqlite")
    return ScoringEngine(backend, cache)


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
        self.backend = backend or load_backend(config.model, dtype=config.dtype, batch_tokens=config.batch_tokens)
        self.prompt_format = resolve_prompt_format(self.backend.tokenizer, config.prompt_format)
        self.engine = open_engine(self.backend, config.cache_dir, config.no_cache)

    def meta(self) -> dict[str, Any]:
        return {"model": self.backend.model_id, "prompt_format": self.prompt_format, "rlaif_version": __version__}

    def samples(self, prompts: list[dict[str, str]]) -> list[list[str]]:
        """n trimmed responses for each prompt, one batched call per sample index."""
        rendered = [render_prompt(self.backend.tokenizer, p["prompt"], self.prompt_format) for p in prompts]
        by_index = [self.engine.generate(rendered, sample_settings(self.config, i), sample=i)
                    for i in range(self.config.n)]
        return [[trim_response(by_index[i][k]) for i in range(self.config.n)] for k in range(len(prompts))]

    def pairs(self, prompts: list[dict[str, str]]) -> tuple[list[dict[str, Any]], Counter]:
        rows: list[dict[str, Any]] = []
        dropped: Counter = Counter()
        for prompt, responses in zip(prompts, self.samples(prompts)):
            pairs, why = form_pairs(prompt, responses, self.config.pairs)
            rows += pairs
            dropped += why
        return rows, dropped


# -- resumable output -----------------------------------------------------------------------------------------------


def generate_pairs(prompts: list[dict[str, str]], config: GenerateConfig, out: str | Path, overwrite: bool = False,
                   backend: Backend | None = None, progress: bool = True) -> dict[str, Any]:
    """Sample, pair and append pairs for `prompts` (dicts with id, prompt) to `out`, resuming by prompt id.

    Returns the summary also written to `<out>.meta.json`: pairs written, drops by reason, samples drawn
    from the model vs the cache. Counts cover the prompts done in this run.
    """
    if not prompts:
        raise RlaifError("No prompts given: pass a file with at least one {\"prompt\": ...} record.")
    out = Path(out)
    digest = config_digest(config)
    done = prepare_output(out, digest, overwrite, key="prompt_id")
    todo = [p for p in prompts if p["id"] not in done]
    if not todo and (old := read_meta(out)).get("status") == "done":
        return {**old, "prompts_this_run": 0, "pairs_this_run": 0, "dropped_identical": 0, "dropped_duplicate": 0,
                "dropped_empty": 0, "samples_from_cache": 0, "samples_generated": 0, "seconds_this_run": 0.0}
    generator = PairGenerator(config, backend)
    base = {"config": asdict(config), "config_digest": digest, **generator.meta()}
    write_json(meta_path(out), {**base, "status": "running"})
    started, written, dropped = time.time(), 0, Counter()
    with RecordWriter(out) as writer, tqdm(total=len(prompts), initial=len(prompts) - len(todo), unit="prompt",
                                           desc="generate", disable=not progress) as bar:
        for chunk in chunks(todo, config.chunk_prompts):
            rows, why = generator.pairs(chunk)
            writer.write_all(rows)
            written, dropped = written + len(rows), dropped + why
            bar.update(len(chunk))
    cache = generator.engine.cache
    summary = {
        "status": "done", "prompts": len(prompts), "prompts_this_run": len(todo), "pairs_this_run": written,
        "pairs_in_file": sum(1 for _ in read_jsonl(out)),
        "dropped_identical": dropped["identical"], "dropped_duplicate": dropped["duplicate"],
        "dropped_empty": dropped["empty"], "samples_from_cache": cache.hits,
        "samples_generated": cache.misses if isinstance(cache, ResultCache) else len(todo) * config.n,
        "seconds_this_run": round(time.time() - started, 2),
    }
    write_json(meta_path(out), {**base, **summary})
    return summary
