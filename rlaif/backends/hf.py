"""The transformers back end: local CPU/GPU inference, the default.

`token_logprobs` sorts requests by length and packs them into left-padded
batches under a token budget; each forward pass keeps logits only for the last
positions it reads (`logits_to_keep`), so the vocabulary projection is paid
for a handful of positions, not the whole prompt.
"""

from __future__ import annotations

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

    def __init__(self, model: Any, tokenizer: Any, model_id: str, batch_tokens: int = 8192):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.batch_tokens = batch_tokens
        self.device = next(model.parameters()).device
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def load(cls, model: str, dtype: str = "float32", device: str | None = None, batch_tokens: int = 8192,
             threads: int | None = None) -> HFBackend:
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
        return cls(lm.to(device), tokenizer, model_id, batch_tokens)

    @torch.inference_mode()
    def token_logprobs(self, requests: list[TokenRequest]) -> list[list[float]]:
        results: list[list[float]] = [[] for _ in requests]
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].ids))
        for batch in _length_batches(order, [len(r.ids) for r in requests], self.batch_tokens):
            for i, values in zip(batch, self._forward([requests[i] for i in batch])):
                results[i] = values
        return results

    def _forward(self, batch: list[TokenRequest]) -> list[list[float]]:
        width = max(len(r.ids) for r in batch)
        keep = max(len(r.ids) - min(p for p, _ in r.reads) for r in batch)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, request in enumerate(batch):
            ids[row, width - len(request.ids):] = torch.tensor(request.ids)
            mask[row, width - len(request.ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                            position_ids=positions.to(self.device), logits_to_keep=keep, use_cache=False).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        out = []
        for row, request in enumerate(batch):
            # kept column c holds position (len - keep + c) of this left-aligned-to-the-end row
            base = len(request.ids) - keep
            out.append([logprobs[row, pos - base, tok].item() for pos, tok in request.reads])
        return out

    @torch.inference_mode()
    def generate(self, prompts: list[str], settings: GenerationSettings) -> list[str]:
        self.tokenizer.padding_side = "left"
        texts: list[str] = []
        step = max(1, self.batch_tokens // 512)
        for start in range(0, len(prompts), step):
            chunk = prompts[start:start + step]
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True).to(self.device)
            torch.manual_seed(settings.seed + start)
            sample = settings.temperature > 0
            out = self.model.generate(
                **enc, max_new_tokens=settings.max_new_tokens, do_sample=sample,
                temperature=settings.temperature if sample else None, top_p=settings.top_p if sample else None,
                top_k=None, pad_token_id=self.tokenizer.pad_token_id,
            )
            new = out[:, enc["input_ids"].shape[1]:]
            texts.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return texts


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
