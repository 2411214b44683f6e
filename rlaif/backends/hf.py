"""The transformers back end: local CPU/GPU inference, the default.

`token_logprobs` sorts requests by length and packs them into left-padded
batches under a token budget; each forward pass keeps logits only for the last
positions it reads (`logits_to_keep`), so the vocabulary projection is paid
for a handful of positions, not the whole prompt.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

from rlaif.backends import GenerationSettings, TokenRequest
from rlaif.backends.default import default_model_dir, default_model_id, is_default
from rlaif.errors import RlaifError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model(model: str) -> tuple[str, str]:
    """(path or hub id to load, stable model id for caches and metadata)."""
    if is_default(model):
        return str(default_model_dir()), default_model_id()
    path = Path(model).expanduser()
    if path.exists():
        config = path / "config.json"
        if not config.exists():
            raise RlaifError(f"{path} is not a model directory (no config.json): pass a saved Hugging Face model.")
        digest = hashlib.sha256(config.read_bytes()).hexdigest()[:12]
        weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
        stamp = "".join(f"{w.name}:{w.stat().st_size}" for w in weights)
        return str(path), f"{path.resolve().name}@{digest}{hashlib.sha256(stamp.encode()).hexdigest()[:6]}"
    return model, model


class HFBackend:
    """A causal LM from transformers behind the `Backend` protocol."""

    def __init__(self, model: Any, tokenizer: Any, model_id: str, batch_tokens: int = 8192,
                 share_prefix: bool = True, min_prefix: int = 32):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.batch_tokens = batch_tokens
        self.share_prefix = share_prefix
        self.min_prefix = min_prefix
        self.device = next(model.parameters()).device
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def load(cls, model: str, dtype: str = "float32", device: str | None = None, batch_tokens: int = 8192,
             threads: int | None = None, share_prefix: bool = True) -> HFBackend:
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

        set_threads(threads)
        path, model_id = resolve_model(model)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RlaifError(f"Cannot load model {model!r}: {first}. Pass `default`, a local model directory "
                             "or a Hugging Face id you can reach.") from err
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(lm.to(device), tokenizer, model_id, batch_tokens, share_prefix=share_prefix)

    @torch.inference_mode()
    def token_logprobs(self, requests: list[TokenRequest]) -> list[list[float]]:
        results: list[list[float]] = [[] for _ in requests]
        plain = list(range(len(requests)))
        if self.share_prefix:
            groups, plain = prefix_groups(requests, self.min_prefix)
            for prefix_len, members in groups:
                for i, values in zip(members, self._forward_shared(prefix_len, [requests[i] for i in members])):
                    results[i] = values
        order = sorted(plain, key=lambda i: len(requests[i].ids))
        for batch in _length_batches(order, [len(r.ids) for r in requests], self.batch_tokens):
            for i, values in zip(batch, self._forward([requests[i] for i in batch])):
                results[i] = values
        return results

    def _forward(self, batch: list[TokenRequest]) -> list[list[float]]:
        ids, mask, keep = _left_padded([r.ids for r in batch], [r.reads for r in batch], self.tokenizer.pad_token_id)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                            position_ids=positions.to(self.device), logits_to_keep=keep, use_cache=False).logits
        return _read(logits, [len(r.ids) for r in batch], [r.reads for r in batch], keep)

    def _forward_shared(self, prefix_len: int, members: list[TokenRequest]) -> list[list[float]]:
        """Run the shared prefix once, then every member's suffix on a copy of its key/value cache."""
        prefix = torch.tensor([members[0].ids[:prefix_len]], device=self.device)
        cache = self.model(input_ids=prefix, use_cache=True, logits_to_keep=1).past_key_values
        out: list[list[float]] = []
        longest = max(len(r.ids) for r in members) - prefix_len
        step = max(1, self.batch_tokens // max(longest, 1))
        for start in range(0, len(members), step):
            chunk = members[start:start + step]
            suffixes = [r.ids[prefix_len:] for r in chunk]
            reads = [tuple((p - prefix_len, t) for p, t in r.reads) for r in chunk]
            ids, mask, keep = _left_padded(suffixes, reads, self.tokenizer.pad_token_id)
            positions = prefix_len + (mask.cumsum(-1) - 1).clamp(min=0)
            full_mask = torch.cat([torch.ones((len(chunk), prefix_len), dtype=torch.long), mask], dim=1)
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(len(chunk))
            logits = self.model(input_ids=ids.to(self.device), attention_mask=full_mask.to(self.device),
                                position_ids=positions.to(self.device), past_key_values=past, use_cache=True,
                                logits_to_keep=keep).logits
            out.extend(_read(logits, [len(s) for s in suffixes], reads, keep))
        return out

    @torch.inference_mode()
    def generate(self, prompts: list[str], settings: GenerationSettings) -> list[str]:
        """Continuations of `prompts`, in batches of rows.

        Greedy decoding (temperature 0) is plain batched argmax. Sampling seeds each row from
        (settings.seed, its prompt) and draws with the Gumbel-max trick from the temperature- and
        top-p-shaped distribution, so a prompt's text never depends on what it was batched with.
        A prompt that already starts with the BOS token (a chat template wrote it) gets no second one.
        """
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper  # noqa: PLC0415

        self.tokenizer.padding_side = "left"
        bos = self.tokenizer.bos_token
        sample = settings.temperature > 0
        warpers = [TemperatureLogitsWarper(settings.temperature)] if sample else []
        warpers += [TopPLogitsWarper(settings.top_p)] if sample and settings.top_p < 1.0 else []
        texts: list[str] = []
        step = max(1, self.batch_tokens // 512)
        for start in range(0, len(prompts), step):
            chunk = prompts[start:start + step]
            ids = [self.tokenizer(p, add_special_tokens=not (bos and p.startswith(bos)))["input_ids"] for p in chunk]
            enc = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(self.device)
            processors = LogitsProcessorList()
            if sample:
                seeds = [int(hashlib.sha256(f"{settings.seed}:{p}".encode()).hexdigest()[:15], 16) for p in chunk]
                rows = [torch.Generator(device=self.device).manual_seed(seed) for seed in seeds]

                def gumbel_max(input_ids: torch.Tensor, scores: torch.Tensor, rows=rows) -> torch.Tensor:
                    for warper in warpers:
                        scores = warper(input_ids, scores)
                    u = torch.stack([torch.rand(scores.shape[-1], generator=g, device=scores.device) for g in rows])
                    return scores - torch.log(-torch.log(u.clamp_min(1e-20)))

                processors.append(gumbel_max)
            out = self.model.generate(
                **enc, max_new_tokens=settings.max_new_tokens, do_sample=False, temperature=None, top_p=None,
                top_k=None, pad_token_id=self.tokenizer.pad_token_id, logits_processor=processors,
            )
            new = out[:, enc["input_ids"].shape[1]:]
            texts.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return texts


def _left_padded(seqs: list[tuple[int, ...]], reads: list[tuple[tuple[int, int], ...]], pad: int):
    """Left-padded ids and mask (every row ends at the last column) and how many last positions to keep."""
    width = max(len(s) for s in seqs)
    keep = max(len(s) - min(p for p, _ in r) for s, r in zip(seqs, reads))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    return ids, mask, keep


def _read(logits: torch.Tensor, lengths: list[int], reads: list[tuple[tuple[int, int], ...]], keep: int) -> list[list[float]]:
    """Log-probs of the requested tokens; kept column c holds position (length - keep + c) of each row."""
    logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
    return [[logprobs[row, pos - (length - keep), tok].item() for pos, tok in row_reads]
            for row, (length, row_reads) in enumerate(zip(lengths, reads))]


def prefix_groups(requests: list[TokenRequest], min_prefix: int) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """Requests sharing a token prefix of at least `min_prefix` (ending before their first read), and the rest.

    Sorting the sequences puts those with a common prefix next to each other; a
    group grows while the common prefix of all its members stays long enough.
    """
    order = sorted(range(len(requests)), key=lambda i: requests[i].ids)
    groups: list[tuple[int, list[int]]] = []
    alone: list[int] = []
    members: list[int] = []
    shared = 0

    def close() -> None:
        if len(members) > 1:
            groups.append((shared, list(members)))
        else:
            alone.extend(members)

    for i in order:
        limit = min(p for p, _ in requests[i].reads)
        if members:
            common = min(shared, _common_length(requests[members[0]].ids, requests[i].ids), limit)
            if common >= min_prefix:
                members.append(i)
                shared = common
                continue
            close()
        members, shared = [i], min(len(requests[i].ids), limit)
    close()
    return groups, alone


def _common_length(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _length_batches(order: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive (length-sorted) indices grouped so rows x longest length stays within `budget` tokens."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def set_threads(threads: int | None) -> None:
    """Use every core for intra-op work unless told otherwise (`RLAIF_THREADS` or `threads`)."""
    wanted = threads or int(os.environ.get("RLAIF_THREADS", "0")) or os.cpu_count() or 1
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
