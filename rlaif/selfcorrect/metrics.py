"""Self-correction metrics (Kumar et al. 2024) with bootstrap intervals, and their markdown report.

Over n problems with first- and second-attempt correctness c1, c2 ∈ {0, 1}:

    Accuracy@t1 = mean(c1)                Accuracy@t2 = mean(c2)
    Δ(t1, t2)   = Accuracy@t2 − Accuracy@t1
    Δ^{i→c}     = mean((1 − c1) · c2)     (wrong, then right)
    Δ^{c→i}     = mean(c1 · (1 − c2))     (right, then wrong)

so Δ = Δ^{i→c} − Δ^{c→i}. Every figure gets a percentile-bootstrap 95% interval over
problems; all five use the same resamples (one seeded generator per metric, same
seed and size), so the intervals are paired.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rlaif.align import bootstrap_ci

METRICS = ("accuracy_t1", "accuracy_t2", "delta", "delta_i_to_c", "delta_c_to_i")
LABELS = {"accuracy_t1": "Accuracy@t1", "accuracy_t2": "Accuracy@t2", "delta": "Δ(t1, t2)",
          "delta_i_to_c": "Δ^{i→c}(t1, t2)", "delta_c_to_i": "Δ^{c→i}(t1, t2)"}


def per_problem(c1: Sequence[bool], c2: Sequence[bool]) -> dict[str, np.ndarray]:
    """Each metric's per-problem value: its mean over problems is the metric."""
    a, b = np.asarray(c1, dtype=float), np.asarray(c2, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"{a.size} first attempts but {b.size} second attempts")
    return {"accuracy_t1": a, "accuracy_t2": b, "delta": b - a, "delta_i_to_c": (1 - a) * b,
            "delta_c_to_i": a * (1 - b)}


def self_correction_metrics(c1: Sequence[bool], c2: Sequence[bool], n_boot: int = 1000,
                            seed: int = 0) -> dict[str, Any]:
    """{metric: value, ..., "n": n, "ci95": {metric: [low, high]}, "counts": the 2x2 table}."""
    values = per_problem(c1, c2)
    n = int(values["accuracy_t1"].size)
    if n == 0:
        raise ValueError("no problems to score")
    report: dict[str, Any] = {key: float(values[key].mean()) for key in METRICS}
    report["n"] = n
    report["ci95"] = {key: list(bootstrap_ci(values[key], n_boot, seed)) for key in METRICS}
    a, b = values["accuracy_t1"].astype(bool), values["accuracy_t2"].astype(bool)
    report["counts"] = {"right_right": int((a & b).sum()), "wrong_right": int((~a & b).sum()),
                        "right_wrong": int((a & ~b).sum()), "wrong_wrong": int((~a & ~b).sum())}
    return report


def format_table(report: dict[str, Any]) -> str:
    """The five figures with their intervals, for the terminal."""
    lines = [f"{'metric':<18} {'value':>8}   95% interval (n={report['n']})"]
    for key in METRICS:
        low, high = report["ci95"][key]
        lines.append(f"{LABELS[key]:<18} {report[key]:>8.3f}   [{low:.3f}, {high:.3f}]")
    return "\n".join(lines)


def render_markdown(report: dict[str, Any], examples: Sequence[dict[str, Any]] = ()) -> str:
    counts = report["counts"]
    rows = "\n".join(f"| {LABELS[k]} | {report[k]:.3f} | [{report['ci95'][k][0]:.3f}, {report['ci95'][k][1]:.3f}] |"
                     for k in METRICS)
    text = f"""# Self-correction report

Model `{report.get('model', '?')}` on `{report.get('problems', '?')}`: {report['n']} problems, two greedy attempts
each; the second reads the problem, the first attempt and the instruction below.

| metric | value | 95% bootstrap interval |
|---|---:|---:|
{rows}

Δ = Δ^{{i→c}} − Δ^{{c→i}}. Intervals: {report.get('n_boot', '?')} percentile-bootstrap resamples of the problems
(seed {report.get('seed', '?')}).

| attempt 1 \\ attempt 2 | right | wrong |
|---|---:|---:|
| right | {counts['right_right']} | {counts['right_wrong']} |
| wrong | {counts['wrong_right']} | {counts['wrong_wrong']} |

Attempts with no number at all: {report.get('no_number_t1', 0)} first, {report.get('no_number_t2', 0)} second.

Self-correction instruction:

> {report.get('instruction', '')}
"""
    if examples:
        text += "\n## Examples\n"
        for row in examples:
            text += (f"\n### {row['id']} ({'right' if row['correct1'] else 'wrong'} → "
                     f"{'right' if row['correct2'] else 'wrong'}, gold {row['gold']})\n\n"
                     f"**Attempt 1** (answer {row['answer1']}):\n\n```\n{_clip(row['attempt1'])}\n```\n\n"
                     f"**Attempt 2** (answer {row['answer2']}):\n\n```\n{_clip(row['attempt2'])}\n```\n")
    return text


def _clip(text: str, limit: int = 600) -> str:
    """An attempt as the report shows it: at most `limit` characters (attempts.jsonl has them whole)."""
    return text if len(text) <= limit else text[:limit] + " […]"
