"""AI labeller alignment: how often the feedback model agrees with human labels, and where it goes wrong.

Input: human preferences in TRL's `{"prompt", "chosen", "rejected"}` format and the
labeller's `Label` rows for the same pairs. Each pair is reduced to a `Scored` (which
slot the human chose, the labeller's probabilities); `build_report` turns those into
one dict of figures. Every rate carries a percentile-bootstrap 95% interval drawn
with a fixed seed, so a rerun prints the same numbers.

Conventions: a probability exactly 0.5 is a tie and counts half; lengths are in
characters; slot 1 is the response shown first.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlaif.errors import RlaifError
from rlaif.io import read_rows
from rlaif.records import content_id
from rlaif.text import as_text

TIE = 1e-9  # |p - 0.5| below this is a tie
HUMAN_FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class AlignConfig:
    """Settings of the alignment report (`rlaif align`)."""

    n_boot: int = field(default=1000, metadata={"help": "Bootstrap resamples for the 95% intervals."})
    n_bins: int = field(default=10, metadata={"help": "Equal-width bins of p_a for the calibration (ECE) table."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap and of which pairs show the chosen response first."})

    def __post_init__(self) -> None:
        if self.n_boot < 1:
            raise RlaifError(f"n_boot={self.n_boot}: use at least 1 bootstrap resample (1000 is usual).")
        if self.n_bins < 1:
            raise RlaifError(f"n_bins={self.n_bins}: use at least 1 calibration bin (10 is usual).")


@dataclass
class Scored:
    """One human pair with the labeller's verdict on it."""

    id: str
    human_a: bool  # the human chose response A
    p_a: float
    p_a_ab: float
    p_a_ba: float
    len_a: int
    len_b: int
    by_principle: dict[str, float] = field(default_factory=dict)
    by_principle_orders: dict[str, list[float]] = field(default_factory=dict)
    option_mass: float | None = None


# ---------------------------------------------------------------- input


def read_human_pairs(path: str | Path, column_map: dict[str, str] | None = None) -> tuple[list[dict], Counter]:
    """Human pairs `{id, prompt, chosen, rejected}` and a count of the rows skipped, by reason."""
    column_map = column_map or {}
    rows = read_rows(path)
    if not rows:
        raise RlaifError(f"{path} holds no records: give a file of prompt/chosen/rejected rows.")
    source = {name: column_map.get(name, name) for name in HUMAN_FIELDS}
    missing = [f"{name}" + (f" (mapped to {col!r})" if col != name else "") for name, col in source.items() if col not in rows[0]]
    if missing:
        raise RlaifError(
            f"{path} lacks column(s) {', '.join(missing)}; it has: {', '.join(sorted(rows[0]))}. "
            "Map yours with --column-map FIELD=COLUMN, e.g. --column-map chosen=response_good."
        )
    id_col = column_map.get("id", "id")
    if "id" in column_map and id_col not in rows[0]:  # a mapped column must exist, the id's too
        raise RlaifError(f"{path} lacks column {id_col!r} (mapped to id); it has: {', '.join(sorted(rows[0]))}.")
    pairs, skipped, seen = [], Counter(), set()
    for row in rows:
        pair = {name: as_text(row.get(col), f"{path}: field {name!r}") for name, col in source.items()}
        empty = [name for name in HUMAN_FIELDS if not pair[name].strip()]
        if empty:
            skipped[f"empty {empty[0]}"] += 1
            continue
        if pair["chosen"].strip() == pair["rejected"].strip():
            skipped["chosen and rejected identical"] += 1
            continue
        raw_id = row.get(id_col)
        pid = str(raw_id) if raw_id not in (None, "") else content_id(pair["prompt"], pair["chosen"], pair["rejected"])
        if pid in seen:
            skipped["duplicate id"] += 1
            continue
        seen.add(pid)
        pairs.append({"id": pid, **pair})
    if not pairs:
        reasons = ", ".join(f"{n} {why}" for why, n in skipped.items())
        raise RlaifError(f"{path}: no usable pair is left ({reasons}); fix the file or the --column-map.")
    return pairs, skipped


def _order_key(pid: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\x1f{pid}".encode()).hexdigest()


def build_pairs(humans: list[dict], seed: int = 0) -> list[dict]:
    """Pairs to label: the chosen response is `response_a` in exactly half of them (rounded up).

    Which half is fixed by a seeded hash of each id, so order never confounds the result
    and a rerun builds the same pairs. Each pair records `human` ("a" or "b").
    """
    ranked = sorted(humans, key=lambda h: _order_key(h["id"], seed))
    first = {h["id"] for h in ranked[::2]}
    pairs = []
    for h in humans:
        a, b = (h["chosen"], h["rejected"]) if h["id"] in first else (h["rejected"], h["chosen"])
        pairs.append({"id": h["id"], "prompt": h["prompt"], "response_a": a, "response_b": b,
                      "human": "a" if h["id"] in first else "b"})
    return pairs


def _probability(value: Any) -> float | None:
    try:
        p = float(value)
    except (TypeError, ValueError):
        return None
    return p if 0.0 <= p <= 1.0 else None


def score_label(label: dict, human_a: bool) -> Scored | None:
    """The `Scored` of one label row, or None when it lacks a probability."""
    probs = [_probability(label.get(key)) for key in ("p_a", "p_a_ab", "p_a_ba")]
    if any(p is None for p in probs):
        return None
    mass = label.get("option_mass")
    return Scored(
        id=str(label["id"]), human_a=human_a, p_a=probs[0], p_a_ab=probs[1], p_a_ba=probs[2],
        len_a=len(label["response_a"]), len_b=len(label["response_b"]),
        by_principle={k: float(v) for k, v in (label.get("by_principle") or {}).items()},
        by_principle_orders={k: [float(x) for x in v] for k, v in (label.get("by_principle_orders") or {}).items()},
        option_mass=float(mass) if isinstance(mass, (int, float)) else None,
    )


def match_labels(humans: list[dict], labels: list[dict]) -> tuple[list[Scored], Counter]:
    """Join labels to human pairs (by id, else by prompt + the two texts); the human slot comes from the texts."""
    by_id = {str(row["id"]): row for row in labels if "id" in row}
    by_text = {(row.get("prompt"), frozenset((row.get("response_a"), row.get("response_b")))): row for row in labels}
    scored, skipped = [], Counter()
    for h in humans:
        texts = frozenset((h["chosen"], h["rejected"]))
        label = by_id.get(h["id"])
        if label is None or frozenset((label.get("response_a"), label.get("response_b"))) != texts:
            label = by_text.get((h["prompt"], texts))
        if label is None:
            skipped["no label for the pair"] += 1
            continue
        item = score_label(label, human_a=label["response_a"] == h["chosen"])
        if item is None:
            skipped["label lacks p_a, p_a_ab or p_a_ba in [0, 1]"] += 1
            continue
        scored.append(item)
    return scored, skipped


# ---------------------------------------------------------------- metrics


def agreement(p: np.ndarray) -> np.ndarray:
    """1 where p > 0.5, 0.5 at a tie, 0 below: the share of a pick."""
    p = np.asarray(p, dtype=float)
    return np.where(np.abs(p - 0.5) <= TIE, 0.5, (p > 0.5).astype(float))


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean, from a generator seeded with `seed`."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def rate(values: np.ndarray, config: AlignConfig) -> dict[str, float | int]:
    """Mean of per-pair scores in [0, 1] with its bootstrap interval and the number of pairs."""
    values = np.asarray(values, dtype=float)
    low, high = bootstrap_ci(values, config.n_boot, config.seed)
    value = float(values.mean()) if values.size else math.nan
    return {"value": value, "low": low, "high": high, "n": int(values.size)}


def _human_p(p_a: np.ndarray, human_a: np.ndarray) -> np.ndarray:
    """Probability that the human's choice is better, from the probability that A is."""
    return np.where(human_a, p_a, 1.0 - p_a)


def _column(scored: list[Scored], name: str) -> np.ndarray:
    return np.array([getattr(s, name) for s in scored], dtype=float)


def alignment(scored: list[Scored], config: AlignConfig, key: str = "p_a") -> dict:
    """Share of pairs where the labeller prefers the human's choice (ties half), from `key`."""
    human_a = np.array([s.human_a for s in scored], dtype=bool)
    return rate(agreement(_human_p(_column(scored, key), human_a)), config)


def picked_slots(p_a_ab: np.ndarray, p_a_ba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The slot (1 = shown first, 2 = second, 0 = tie) picked in each order.

    Order AB shows A first: slot 1 is picked when p_a_ab > 0.5. Order BA shows B first,
    so slot 1 is picked when p_a_ba < 0.5.
    """
    p_a_ab, p_a_ba = np.asarray(p_a_ab, dtype=float), np.asarray(p_a_ba, dtype=float)
    tie_ab, tie_ba = np.abs(p_a_ab - 0.5) <= TIE, np.abs(p_a_ba - 0.5) <= TIE
    slot_ab = np.where(tie_ab, 0, np.where(p_a_ab > 0.5, 1, 2))
    slot_ba = np.where(tie_ba, 0, np.where(p_a_ba < 0.5, 1, 2))
    return slot_ab, slot_ba


def position_bias(scored: list[Scored], config: AlignConfig) -> dict:
    """Share of pairs where both orders pick the same slot, and which slot; `p_first` as alpaca_eval."""
    slot_ab, slot_ba = picked_slots(_column(scored, "p_a_ab"), _column(scored, "p_a_ba"))
    same = (slot_ab == slot_ba) & (slot_ab > 0)
    first = np.concatenate([slot_ab == 1, slot_ba == 1]).astype(float)
    first[np.concatenate([slot_ab == 0, slot_ba == 0])] = 0.5
    slot_1, slot_2 = float(np.mean(same & (slot_ab == 1))), float(np.mean(same & (slot_ab == 2)))
    return {
        "same_slot": rate(same.astype(float), config),
        "slot_1": slot_1,
        "slot_2": slot_2,
        "favoured": "first" if slot_1 > slot_2 else "second" if slot_2 > slot_1 else "neither",
        "tie_in_an_order": float(np.mean((slot_ab == 0) | (slot_ba == 0))),
        "p_first": float(first.mean()),
    }


def principle_alignment(scored: list[Scored], config: AlignConfig) -> dict[str, dict]:
    """Alignment under each principle, over the pairs that used it, with its position bias."""
    result = {}
    for pid in sorted({pid for s in scored for pid in s.by_principle}):
        used = [s for s in scored if pid in s.by_principle]
        p_a = np.array([s.by_principle[pid] for s in used])
        entry = rate(agreement(_human_p(p_a, np.array([s.human_a for s in used]))), config)
        orders = [s.by_principle_orders[pid] for s in used if len(s.by_principle_orders.get(pid, ())) == 2]
        if orders:
            slot_ab, slot_ba = picked_slots(*np.array(orders, dtype=float).T)
            entry["same_slot"] = float(np.mean((slot_ab == slot_ba) & (slot_ab > 0)))
        result[pid] = entry
    return result


def calibration(scored: list[Scored], n_bins: int = 10) -> dict:
    """Brier score and expected calibration error of p_a against "the human chose A", with the table."""
    p = _column(scored, "p_a")
    y = np.array([s.human_a for s in scored], dtype=float)
    index = np.clip(np.floor(p * n_bins).astype(int), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        inside = index == b
        if not inside.any():
            continue
        mean_p, human_rate = float(p[inside].mean()), float(y[inside].mean())
        ece += inside.sum() / p.size * abs(mean_p - human_rate)
        bins.append({"low": b / n_bins, "high": (b + 1) / n_bins, "n": int(inside.sum()),
                     "mean_p_a": mean_p, "human_a_rate": human_rate})
    return {"brier": float(np.mean((p - y) ** 2)), "ece": float(ece), "bins": bins}


def _longer_is_a(scored: list[Scored]) -> tuple[np.ndarray, np.ndarray]:
    """Which pairs differ in length, and whether A is the longer there."""
    len_a, len_b = _column(scored, "len_a"), _column(scored, "len_b")
    return len_a != len_b, len_a > len_b


def length_bias(scored: list[Scored], config: AlignConfig) -> dict:
    """Share of picks of the longer response by the labeller, beside the humans' share (equal lengths left out)."""
    differ, longer_a = _longer_is_a(scored)
    p_longer = np.where(longer_a, _column(scored, "p_a"), 1.0 - _column(scored, "p_a"))[differ]
    human_longer = (np.array([s.human_a for s in scored]) == longer_a)[differ].astype(float)
    return {
        "ai_picks_longer": rate(agreement(p_longer), config),
        "human_picks_longer": rate(human_longer, config),
        "n_equal_length": int((~differ).sum()),
    }


def option_mass(scored: list[Scored]) -> dict:
    """How much of the vocabulary's probability the answer options got (low: template or model is wrong)."""
    mass = np.array([s.option_mass for s in scored if s.option_mass is not None], dtype=float)
    if mass.size == 0:
        return {"mean": None, "median": None, "min": None, "n": 0}
    return {"mean": float(mass.mean()), "median": float(np.median(mass)), "min": float(mass.min()), "n": int(mass.size)}


def coin_range(n: int, level: float = 0.95) -> tuple[float, float]:
    """The central `level` range of a fair coin's agreement rate on n pairs (exact binomial quantiles)."""
    if n == 0:
        return (math.nan, math.nan)
    tail, cdf, low = (1 - level) / 2, 0.0, None
    for k in range(n + 1):
        cdf += math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2))
        if low is None and cdf >= tail - 1e-12:
            low = k
        if cdf >= 1 - tail - 1e-12:
            return low / n, k / n
    return low / n, 1.0  # pragma: no cover - the cdf reaches 1


def baselines(scored: list[Scored], config: AlignConfig) -> dict[str, dict]:
    """Random (a fair coin: 50% and its 95% range), always-longer and always-shorter on the same pairs."""
    differ, longer_a = _longer_is_a(scored)
    longer = np.where(differ, (np.array([s.human_a for s in scored]) == longer_a).astype(float), 0.5)
    low, high = coin_range(len(scored))
    return {
        "random": {"value": 0.5, "low": low, "high": high, "n": len(scored)},
        "always_longer": rate(longer, config),
        "always_shorter": rate(1.0 - longer, config),
    }


# ---------------------------------------------------------------- report


def build_report(
    scored: list[Scored], skipped: Counter | dict, n_input: int, config: AlignConfig, source: dict | None = None
) -> dict[str, Any]:
    """Every figure of the alignment report, as one JSON-ready dict."""
    if not scored:
        reasons = ", ".join(f"{n} {why}" for why, n in dict(skipped).items()) or "none given"
        raise RlaifError(f"No pair could be scored ({reasons}); check that the labels belong to these human pairs.")
    report: dict[str, Any] = {
        "n_input": n_input,
        "n_scored": len(scored),
        "skipped": dict(skipped),
        "share_human_a": float(np.mean([s.human_a for s in scored])),
        "alignment": alignment(scored, config),
        "alignment_by_order": {"ab": alignment(scored, config, "p_a_ab"), "ba": alignment(scored, config, "p_a_ba")},
        "position_bias": position_bias(scored, config),
        "by_principle": principle_alignment(scored, config),
        "calibration": calibration(scored, config.n_bins),
        "length_bias": length_bias(scored, config),
        "option_mass": option_mass(scored),
        "baselines": baselines(scored, config),
        "settings": {"n_boot": config.n_boot, "n_bins": config.n_bins, "seed": config.seed},
        "source": source or {},
    }
    report["warnings"] = report_warnings(report)
    return report


def report_warnings(report: dict) -> list[str]:
    """Plain-language cautions a reader should see before trusting the labels."""
    notes = []
    align, n = report["alignment"], report["n_scored"]
    if align["low"] <= 0.5 <= align["high"]:
        notes.append(f"Alignment's 95% interval includes 50%: on {n} pairs the labeller is not distinguishable from chance.")
    best = max(report["baselines"][k]["value"] for k in ("always_longer", "always_shorter"))
    if align["value"] <= best:
        notes.append("The labeller does no better than always picking the longer (or shorter) response.")
    same = report["position_bias"]["same_slot"]["value"]
    if same > 0.25:
        notes.append(f"In {same:.0%} of pairs the pick follows the slot, not the content: strong position bias.")
    lb = report["length_bias"]
    if lb["ai_picks_longer"]["n"] and lb["ai_picks_longer"]["value"] - lb["human_picks_longer"]["value"] > 0.1:
        notes.append("The labeller prefers the longer response clearly more often than the humans do.")
    mass = report["option_mass"]["mean"]
    if mass is not None and mass < 0.5:
        notes.append(f"The answer options got only {mass:.0%} of the probability: the template or model is likely wrong.")
    if n < 100:
        notes.append(f"Only {n} pairs were scored: the intervals are wide.")
    return notes
