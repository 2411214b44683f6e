"""Model back ends behind one small protocol.

A back end turns token ids into log-probabilities (`token_logprobs`) and
prompts into text (`generate`). Everything above it (the scoring engine,
caching, labelling) is back-end agnostic, so a test can pass a fake whose
log-probs are known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class TokenRequest:
    """Read log-probs from one sequence: each read is (position, token id), asking
    log P(token at position + 1 = token id | ids[: position + 1])."""

    ids: tuple[int, ...]
    reads: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


class Backend(Protocol):
    model_id: str
    tokenizer: Any

    def token_logprobs(self, requests: list[TokenRequest]) -> list[list[float]]: ...

    def generate(self, prompts: list[str], settings: GenerationSettings) -> list[str]: ...


def load_backend(model: str, **kwargs: Any) -> Backend:
    """The transformers back end for `model`: `default` (embedded Gemma 3 270M), a HF id or a local dir."""
    from rlaif.backends.hf import HFBackend  # noqa: PLC0415 (torch is heavy)

    return HFBackend.load(model, **kwargs)
