"""Batched decoding for the transformers back end: many rows a step, finished rows dropped at once.

Decoding a small model is bound by memory bandwidth: each step reads every
weight, whether for one row or forty, so rows are decoded together up to a
token budget (rows x (longest prompt + longest max_new_tokens) <= batch_tokens):
the n samples of a prompt and several prompts share each step. Rows with the
same prompt share one prefill. transformers' `generate` keeps a finished row in
the batch (it pads it) until the last row ends; this loop drops it from the
batch, the key/value cache and the mask as soon as it ends: at an
end-of-sequence token (the model's, the tokenizer's, or a stop string that is
one special token, such as `<end_of_turn>`), at a stop string in its decoded
text, or at its max_new_tokens. The text is cut before the first stop string.

A row's text depends only on its prompt and settings, never on its batch-mates
(up to float rounding of a batched matmul): rows are left-padded with position
ids counted from each row's first real token (sliding-window attention sees the
same tokens, as the window is counted back from the query), and sampling seeds
each row from (its seed, its prompt) and draws with the Gumbel-max trick, one
uniform per vocabulary entry a step from the row's own generator: the same
numbers, and so the same token, as the transformers path this replaced (the
noise's two logs are only computed for the tokens that can win). Temperature is `logits / temperature`; top-p keeps the fewest most likely
tokens whose probability reaches top_p (transformers' TopPLogitsWarper, but
from a top-k instead of a sort of the whole vocabulary). A model's
generation_config sampling extras (repetition penalty and the like) are not
applied: a row is decoded by its GenerationSettings alone.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rlaif.backends import GenerationSettings
from rlaif.errors import RlaifError

GUMBEL_MARGIN = 1e-3  # slack on the bound that rules a token out of the Gumbel-max draw (float rounding)


@dataclass
class DecodeStats:
    """What decoding cost: model calls, prompt tokens prefilled, rows carried through decode steps, tokens kept."""

    forwards: int = 0
    prefill_tokens: int = 0
    row_steps: int = 0
    new_tokens: int = 0


@dataclass
class Row:
    """One continuation being decoded."""

    index: int
    prompt_ids: list[int]
    settings: GenerationSettings
    end_ids: frozenset[int]
    text_stops: tuple[str, ...]
    generator: torch.Generator | None = None
    ids: list[int] = field(default_factory=list)


def generate_texts(model: Any, tokenizer: Any, prompts: list[str], settings: Sequence[GenerationSettings],
                   batch_tokens: int, stats: DecodeStats | None = None) -> list[str]:
    """One continuation per prompt, each cut before the first of its settings' stop strings."""
    stats = stats if stats is not None else DecodeStats()
    device = next(model.parameters()).device
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    added = tokenizer.get_added_vocab() if hasattr(tokenizer, "get_added_vocab") else {}
    ends: dict[tuple[str, ...], frozenset[int]] = {}
    rows = []
    for index, (prompt, s) in enumerate(zip(prompts, settings)):
        if s.stop not in ends:
            ends[s.stop] = frozenset(stop_token_ids(tokenizer, [s], model_eos))
        text_stops = tuple(stop for stop in s.stop if stop and stop not in added)
        ids = encode_prompt(tokenizer, prompt)
        if not ids:
            raise RlaifError(f"Prompt {index} is empty (no tokens) and this tokenizer adds no BOS to start from: "
                             "give every record a non-empty prompt.")
        rows.append(Row(index, ids, s, ends[s.stop], text_stops, seeded_generator(s, prompt, device)))
    texts = [""] * len(rows)
    for batch in plan_batches(rows, batch_tokens):
        decode_batch(model, tokenizer, batch, stats)
        for row in batch:
            texts[row.index] = cut_at_stop(tokenizer.decode(row.ids, skip_special_tokens=True), row.settings.stop)
            stats.new_tokens += len(row.ids)
    return texts


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt's token ids; no second BOS when the text already starts with one (a chat template wrote it)."""
    bos = tokenizer.bos_token
    return list(tokenizer(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))["input_ids"])


def seeded_generator(settings: GenerationSettings, prompt: str, device: torch.device) -> torch.Generator | None:
    """The row's own random stream when it samples (None when greedy)."""
    if settings.temperature <= 0:
        return None
    return torch.Generator(device=device).manual_seed(row_seed(settings.seed, prompt))


def row_seed(seed: int, prompt: str) -> int:
    """The sampling seed of a row: from its settings' seed and its prompt, never from its position in a batch."""
    return int(hashlib.sha256(f"{seed}:{prompt}".encode()).hexdigest()[:15], 16)


def stop_token_ids(tokenizer: Any, per: Sequence[GenerationSettings], model_eos: int | list[int] | None = None) -> list[int]:
    """End-of-sequence ids for rows: the model's and tokenizer's eos, plus every stop string that all of `per`
    share and that is one special token (a chat turn's end, e.g. `<end_of_turn>`). Decoding drops special
    tokens, so such a stop can only be honoured as a token; the rest are found in the decoded text."""
    ids = list(model_eos) if isinstance(model_eos, (list, tuple)) else [model_eos]
    ids = [i for i in [*ids, tokenizer.eos_token_id] if i is not None]
    shared = set.intersection(*(set(s.stop) for s in per)) if per else set()
    added = tokenizer.get_added_vocab() if hasattr(tokenizer, "get_added_vocab") else {}
    ids += sorted(added[stop] for stop in shared if stop in added)
    return list(dict.fromkeys(ids))


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """The text before the first stop string."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


def plan_batches(rows: list[Row], batch_tokens: int) -> list[list[Row]]:
    """Rows of one sampling shape (temperature, top_p), by prompt length, cut where the next row would take the
    batch past `batch_tokens` (rows x (longest prompt + longest max_new_tokens)); a batch has at least one row."""
    shapes: dict[tuple[float, float], list[Row]] = {}
    for row in rows:
        s = row.settings
        shapes.setdefault((s.temperature, s.top_p if s.temperature > 0 else 1.0), []).append(row)
    batches: list[list[Row]] = []
    for group in shapes.values():
        group.sort(key=lambda r: (len(r.prompt_ids), r.index))
        batch: list[Row] = []
        longest_prompt = longest_new = 0
        for row in group:
            prompt, new = max(longest_prompt, len(row.prompt_ids)), max(longest_new, row.settings.max_new_tokens)
            if batch and (len(batch) + 1) * (prompt + new) > batch_tokens:
                batches.append(batch)
                batch, prompt, new = [], len(row.prompt_ids), row.settings.max_new_tokens
            batch.append(row)
            longest_prompt, longest_new = prompt, new
        batches.append(batch)
    return batches


def decode_batch(model: Any, tokenizer: Any, rows: list[Row], stats: DecodeStats) -> None:
    """Prefill the rows' distinct prompts once, then decode step by step, dropping each row as it ends."""
    device = next(model.parameters()).device
    logits, cache, mask, positions = prefill(model, tokenizer, rows, stats)
    live = list(rows)
    while True:
        tokens = next_tokens(logits, live).tolist()
        keep = [k for k, (row, token) in enumerate(zip(live, tokens)) if not step_row(row, token)]
        ended_by_text = rows_ending_in_stop(tokenizer, [live[k] for k in keep])
        keep = [k for k in keep if live[k].index not in ended_by_text]
        if not keep:
            return
        if len(keep) < len(live):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, positions = mask[index], positions[index]
            tokens = [tokens[k] for k in keep]
            live = [live[k] for k in keep]
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
        positions = positions + 1
        logits = forward(model, torch.tensor(tokens, device=device)[:, None], mask, positions[:, None], cache)
        stats.forwards += 1
        stats.row_steps += len(live)


def step_row(row: Row, token: int) -> bool:
    """Append the sampled token to the row; whether the row has ended (an end id, or max_new_tokens reached).

    An end token stays in the ids, as `generate` left it: decoding drops it when it is a special token."""
    row.ids.append(token)
    return token in row.end_ids or len(row.ids) >= row.settings.max_new_tokens


def rows_ending_in_stop(tokenizer: Any, rows: list[Row]) -> set[int]:
    """Indices of the rows whose decoded text now holds one of their stop strings."""
    checked = [row for row in rows if row.text_stops]
    if not checked:
        return set()
    texts = tokenizer.batch_decode([row.ids for row in checked], skip_special_tokens=True)
    return {row.index for row, text in zip(checked, texts) if any(stop in text for stop in row.text_stops)}


def prefill(model: Any, tokenizer: Any, rows: list[Row], stats: DecodeStats):
    """Left-padded distinct prompts through the model once; the cache is then spread to every row.

    Returns the last position's logits of every row, the cache, the attention mask and each row's last position.
    """
    from transformers import DynamicCache  # noqa: PLC0415

    device = next(model.parameters()).device
    distinct = list(dict.fromkeys(tuple(row.prompt_ids) for row in rows))
    width = max(len(ids) for ids in distinct)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(distinct), width), pad, dtype=torch.long)
    mask = torch.zeros((len(distinct), width), dtype=torch.long)
    for k, prompt in enumerate(distinct):
        ids[k, width - len(prompt):] = torch.tensor(prompt)
        mask[k, width - len(prompt):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    logits = forward(model, ids.to(device), mask.to(device), positions.to(device), cache)
    stats.forwards += 1
    stats.prefill_tokens += sum(len(p) for p in distinct)
    which = {prompt: k for k, prompt in enumerate(distinct)}
    spread = torch.tensor([which[tuple(row.prompt_ids)] for row in rows], device=device)
    if len(distinct) < len(rows) or spread.tolist() != list(range(len(rows))):
        cache.batch_select_indices(spread)
    return logits[spread], cache, mask.to(device)[spread], positions[:, -1].to(device)[spread]


def forward(model: Any, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
    """The model on `ids` after `cache`; float32 logits of each row's last position."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                **{cache_argument(model): cache})
    return out.logits[:, -1].to(dtype=torch.float32)


def cache_argument(model: Any) -> str:
    """The forward argument that takes the key/value cache: `cache` (transformers >= 5.x) or `past_key_values`."""
    name = getattr(model, "_rlaif_cache_argument", None)
    if name is None:
        name = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
        model._rlaif_cache_argument = name
    return name


def next_tokens(logits: torch.Tensor, rows: list[Row]) -> torch.Tensor:
    """Each row's next token: the argmax when greedy, else the Gumbel-max draw from the shaped distribution:
    argmax(logits / temperature - log(-log(u))) over the row's nucleus, u from the row's own generator."""
    settings = rows[0].settings  # a batch shares temperature and top_p (plan_batches)
    if settings.temperature <= 0:
        return logits.argmax(dim=-1)
    scores = logits if settings.temperature == 1.0 else logits / settings.temperature
    u = uniforms(scores, [row.generator for row in rows])
    if settings.top_p < 1.0:
        row_index, token = nucleus(scores, settings.top_p)
    else:
        row_index, token = gumbel_candidates(scores, u)
    values = scores[row_index, token] + _gumbel(u[row_index, token])
    chosen = first_argmax(values, row_index, token, len(rows), scores.shape[-1])
    if bool((chosen == scores.shape[-1]).any()):  # only NaN logits leave a row without a candidate
        raise RlaifError(f"The model gave NaN logits while generating (dtype {logits.dtype}): try "
                         "--backend-option dtype=float32, or check the model's weights.")
    return chosen


def uniforms(scores: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One uniform per vocabulary entry a row, each row from its own generator (the numbers torch.rand draws)."""
    u = torch.empty_like(scores)
    for row, generator in zip(u, generators):
        row.uniform_(generator=generator)
    return u


def nucleus(scores: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, token) of each row's nucleus: the most likely tokens while the mass above them is < top_p (what
    transformers' TopPLogitsWarper keeps, from its ascending sort), read from a top-k that grows until it covers
    top_p. Probabilities and their sums are float64, so the cut sits where exact arithmetic puts it."""
    log_total = torch.logsumexp(scores.double(), dim=-1, keepdim=True)
    vocab = scores.shape[-1]
    k = min(vocab, 256)
    while True:
        top, index = scores.topk(k, dim=-1)
        covered = torch.exp(top.double() - log_total).cumsum(dim=-1)
        if k == vocab or bool((covered[:, -1] >= top_p).all()):
            break
        k = min(vocab, k * 8)
    above = torch.cat([covered.new_zeros((len(covered), 1)), covered[:, :-1]], dim=-1)  # mass ranked above each
    row_index, rank = (above < top_p).nonzero(as_tuple=True)
    return row_index, index[row_index, rank]


def gumbel_candidates(scores: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, token) of the tokens that can win the Gumbel-max draw: a token scoring below (the top-scoring
    token's perturbed score) - (the row's largest noise) cannot, so most of the vocabulary skips the two logs."""
    top = scores.argmax(dim=-1, keepdim=True)
    floor = scores.gather(1, top) + _gumbel(u.gather(1, top)) - _gumbel(u.amax(dim=-1, keepdim=True))
    return (scores >= floor - GUMBEL_MARGIN).nonzero(as_tuple=True)


def first_argmax(values: torch.Tensor, row_index: torch.Tensor, token: torch.Tensor, rows: int,
                 vocab: int) -> torch.Tensor:
    """Per row, the token with the largest value among its (row, token) entries; the lowest token on a tie."""
    best = torch.full((rows,), float("-inf"), dtype=values.dtype, device=values.device)
    best = best.scatter_reduce(0, row_index, values, "amax")
    winners = torch.where(values == best[row_index], token, torch.full_like(token, vocab))
    return torch.full((rows,), vocab, dtype=token.dtype, device=token.device).scatter_reduce(0, row_index, winners, "amin")


def _gumbel(u: torch.Tensor) -> torch.Tensor:
    """Gumbel noise from uniforms, written as the transformers-path processor wrote it."""
    return -torch.log(-torch.log(u.clamp_min(1e-20)))
