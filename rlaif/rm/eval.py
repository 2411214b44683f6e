"""Judging a reward model: rewards for token sequences, pairwise metrics, the model card.

`accuracy` is strict, as in RewardBench: a pair counts only when the preferred
response gets the strictly higher reward (ties count as wrong); pairs with no
preference (p = 0.5) are left out of it. On AI labels it is the agreement with
the labeller; on human pairs (p = 1 for `chosen`) it is the usual accuracy.
Calibration compares sigma(r_a - r_b) with the soft label p (Brier score and
expected calibration error over ten equal-width bins).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlaif.rm.data import PreferencePair, encode_texts


def compute_rewards(model: Any, pad_token_id: int, sequences: Sequence[list[int]], batch_size: int = 16) -> list[float]:
    """One scalar reward per token sequence, batched by length, right-padded as in training."""
    import torch  # noqa: PLC0415 (heavy)

    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    rewards = [0.0] * len(sequences)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            width = max(len(sequences[i]) for i in index)
            ids = torch.full((len(index), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(index):
                ids[row, : len(sequences[i])] = torch.tensor(sequences[i], dtype=torch.long)
                mask[row, : len(sequences[i])] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            for row, i in enumerate(index):
                rewards[i] = float(logits[row, 0])
    model.train(was_training)
    return rewards


def preference_metrics(r_a: Sequence[float], r_b: Sequence[float], p: Sequence[float], bins: int = 10) -> dict[str, Any]:
    """Accuracy (strict), soft-label loss, calibration and reward statistics of rewards against labels p."""
    r_a, r_b, p = (np.asarray(x, dtype=np.float64) for x in (r_a, r_b, p))
    delta = r_a - r_b
    q = 0.5 * (1.0 + np.tanh(delta / 2.0))  # sigma(delta), stable for large |delta|
    decided = p != 0.5
    prefer_a = p > 0.5
    right = np.where(prefer_a, delta > 0, delta < 0)[decided]
    margin = np.where(prefer_a, delta, -delta)[decided]
    loss = p * np.logaddexp(0.0, -delta) + (1.0 - p) * np.logaddexp(0.0, delta)
    rewards = np.concatenate([r_a, r_b])
    return {
        "n": int(len(p)),
        "n_decided": int(decided.sum()),
        "accuracy": float(right.mean()) if right.size else None,
        "ties": int((delta == 0).sum()),
        "margin_mean": float(margin.mean()) if margin.size else None,
        "loss": float(loss.mean()),
        "brier": float(np.mean((q - p) ** 2)),
        "ece": expected_calibration_error(q, p, bins),
        "p_mean": float(p.mean()),
        "q_mean": float(q.mean()),
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
    }


def expected_calibration_error(q: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """sum over equal-width bins of q: (share of pairs in the bin) * |mean q - mean p|."""
    index = np.minimum((q * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(index):
        in_bin = index == b
        total += in_bin.mean() * abs(q[in_bin].mean() - p[in_bin].mean())
    return float(total)


def evaluate_reward_model(
    model: Any, tokenizer: Any, pairs: Sequence[PreferencePair], max_length: int = 512, batch_size: int = 16
) -> dict[str, Any]:
    """`preference_metrics` of the model's rewards on `pairs`, plus how many texts were truncated."""
    prompts = [pair.prompt for pair in pairs]
    ids_a, cut_a = encode_texts(tokenizer, prompts, [pair.response_a for pair in pairs], max_length)
    ids_b, cut_b = encode_texts(tokenizer, prompts, [pair.response_b for pair in pairs], max_length)
    rewards = compute_rewards(model, tokenizer.pad_token_id, ids_a + ids_b, batch_size)
    metrics = preference_metrics(rewards[: len(pairs)], rewards[len(pairs) :], [pair.p for pair in pairs])
    metrics["n_truncated_texts"] = cut_a + cut_b
    return metrics


_COLUMNS = ("n", "accuracy", "loss", "brier", "ece", "reward_mean", "reward_std")


def _table(sections: dict[str, dict[str, Any]]) -> str:
    lines = ["| data | " + " | ".join(_COLUMNS) + " |", "|---" * (len(_COLUMNS) + 1) + "|"]
    for name, metrics in sections.items():
        cells = [_cell(metrics.get(column)) for column in _COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def metric_sections(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each evaluated data set's metrics by a readable name."""
    sections = {}
    for key, title in (("train_labels", "training labels"), ("eval_labels", "held-out labels")):
        if metrics.get(key):
            sections[title] = metrics[key]
    for name, values in (metrics.get("human") or {}).items():
        sections[f"human: {name}"] = values
    return sections


def write_model_card(out: str | Path, metrics: dict[str, Any]) -> Path:
    """README.md for the reward model: data, labels' source, loss, metrics and the full config."""
    data, config = metrics["data"], metrics["config"]
    kind = "soft AI-feedback labels (p_a)" if data["kind"] == "soft" else "hard preference pairs (chosen > rejected, p = 1)"
    source = json.dumps(data.get("source") or {}, indent=2, ensure_ascii=False)
    notes = "\n".join(f"- {note}" for note in metrics.get("notes", [])) or "- none"
    text = f"""---
library_name: transformers
base_model: {metrics["base_model"]}
pipeline_tag: text-classification
tags: [reward-model, rlaif, trl]
---

# Reward model trained with rlaif

A sequence classifier with one output, the reward, fine-tuned from `{metrics["base_model"]}` by
`rlaif train-rm` (rlaif {metrics.get("rlaif_version", "?")}, TRL RewardTrainer) on {kind}.

## Data
- file: `{data["labels"]}` (sha256 `{data.get("sha256", "")[:16]}`)
- pairs: {data["n_pairs"]}; dropped below --min-confidence {config["min_confidence"]}: {data["n_low_confidence"]};
  training {data["n_train"]}, held out {data["n_eval"]} (split by prompt, seed {config["seed"]})
- labels' source:

```json
{source}
```

## Loss
Cross-entropy with the soft label p (probability that A is better):
`-(p log sigma(r_a - r_b) + (1 - p) log sigma(r_b - r_a))`; hard pairs are p = 1.
The text read is prompt + response (the tokenizer's chat template when it has one).

## Metrics
Accuracy is strict (the preferred response must get the higher reward; ties count as wrong);
on AI labels it is the agreement with the labeller. Brier and ECE compare sigma(r_a - r_b) with p.
For PPO, normalise rewards with mean {_cell(metrics.get("reward_mean"))} and std {_cell(metrics.get("reward_std"))}.

{_table(metric_sections(metrics))}

## Notes
{notes}

## Config
```json
{json.dumps(config, indent=2, ensure_ascii=False)}
```

## Use
```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained("{Path(out).name}")
tokenizer = AutoTokenizer.from_pretrained("{Path(out).name}")
```
"""
    path = Path(out) / "README.md"
    path.write_text(text, encoding="utf-8")
    return path
