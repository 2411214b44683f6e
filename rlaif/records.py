"""The on-disk schema: one dataclass per record kind, one JSON object per line.

Every record has an `id`; when the input has none, `content_id` makes one from
the text, so the same pair always gets the same id (resume and seeding rely on it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


def content_id(*texts: str) -> str:
    """A stable 16-hex id from the record's text."""
    digest = hashlib.sha256("\x1f".join(texts).encode("utf-8")).hexdigest()
    return digest[:16]


@dataclass
class Label:
    """An AI feedback label for one pair.

    `p_a` is the final probability that response A is better. `p_a_ab` and
    `p_a_ba` are the same probability read from each presentation order (A shown
    first / B shown first), already mapped to "A is better" and averaged over the
    principles. `by_principle` maps principle id -> p_a under that principle and
    `by_principle_orders` -> [p_a_ab, p_a_ba] under it. `option_mass` is the mean
    share of the vocabulary's probability that the answer options received.
    """

    id: str
    prompt: str
    response_a: str
    response_b: str
    p_a: float
    p_a_ab: float
    p_a_ba: float
    by_principle: dict[str, float]
    by_principle_orders: dict[str, list[float]]
    option_mass: float
    chosen: str
    rejected: str
    rationale: dict[str, list[str]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Score:
    """A d-RLAIF score of one response: the 1-10 rating's expectation mapped to [-1, 1]."""

    id: str
    prompt: str
    response: str
    score: float
    mean_rating: float
    p_ratings: dict[str, float]
    option_mass: float
    meta: dict[str, Any] = field(default_factory=dict)
