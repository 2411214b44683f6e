"""The training run's record: one log row per step, the whole-run summary, the curve and the model card."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rlaif import __version__
from rlaif.io import read_jsonl

logger = logging.getLogger(__name__)


def score_row(logs: dict[str, Any]) -> dict[str, Any] | None:
    """The log row of one SCoRe step from TRL's metrics (None for logs that are not a training step)."""
    if "rewards/attempt2/mean" not in logs:
        return None
    r1, r2 = logs.get("rewards/attempt1/mean"), logs["rewards/attempt2/mean"]
    stage = logs.get("score/stage")
    return {
        "stage": int(stage) if stage is not None else None,
        "reward_attempt1": r1, "reward_attempt2": r2, "delta": None if r1 is None else r2 - r1,
        "improved": logs.get("score/improved"), "worsened": logs.get("score/worsened"),
        "kl": logs.get("kl"), "completion_length_mean": logs.get("completions/mean_length"),
        "loss": logs.get("loss"), "entropy": logs.get("entropy"), "grad_norm": logs.get("grad_norm"),
        "lr": logs.get("learning_rate"),
    }


def log_rows(log: Path) -> list[dict[str, Any]]:
    return list(read_jsonl(log)) if log.exists() else []


def log_summary(log: Path, stage1_steps: int) -> dict[str, Any]:
    """Steps, and both attempts' mean reward at the first and last logged step of each stage."""
    rows = log_rows(log)
    summary: dict[str, Any] = {"steps": rows[-1]["step"] if rows else 0, "logged_steps": len(rows),
                               "stage1_steps": stage1_steps,
                               "train_seconds": rows[-1].get("seconds") if rows else None}
    for stage in (1, 2):
        part = [r for r in rows if r.get("stage") == stage]
        for key in ("reward_attempt1", "reward_attempt2"):
            summary[f"stage{stage}_{key}_first"] = part[0].get(key) if part else None
            summary[f"stage{stage}_{key}_last"] = part[-1].get(key) if part else None
    return summary


def plot_rewards(log: Path, png: Path, stage1_steps: int) -> Path | None:
    """Both attempts' mean reward per step (stage boundary dashed), and the KL; None without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        logger.warning("matplotlib is not installed, so no %s: pip install 'rlaif[plot]'.", png)
        return None
    rows = log_rows(log)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for key, label in (("reward_attempt1", "attempt 1"), ("reward_attempt2", "attempt 2")):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        left.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3, label=label)
    kl = [(r["step"], r["kl"]) for r in rows if r.get("kl") is not None]
    right.plot([s for s, _ in kl], [v for _, v in kl], marker="o", markersize=3, color="gray")
    for ax, title in ((left, "mean reward per attempt"), (right, "KL to the base policy")):
        if 0 < stage1_steps < (rows[-1]["step"] if rows else 0):
            ax.axvline(stage1_steps + 0.5, linestyle="--", color="black", linewidth=0.8)
        ax.set_title(title)
        ax.set_xlabel("step (stage I, then stage II)")
        ax.grid(alpha=0.3)
    left.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def write_card(dest: Path, config: Any, summary: dict[str, Any], reward: str, lora: dict[str, Any] | None) -> Path:
    """README.md of a policy trained by `rlaif train-self-correct`."""
    tuning = (f"LoRA (r={lora['r']}, alpha={lora['alpha']}, all linear layers), merged into the base weights; the "
              "adapter alone is saved beside this folder" if lora else "full fine-tuning")
    figures = "\n".join(f"| {key} | {_cell(value)} |" for key, value in summary.items())
    settings = {k: v for k, v in vars(config).items()}
    text = f"""---
library_name: transformers
base_model: {config.policy}
pipeline_tag: text-generation
tags: [rlaif, trl, score, self-correction]
---

# Policy trained to self-correct with rlaif (SCoRe)

Fine-tuned from `{config.policy}` by `rlaif train-self-correct` (rlaif {__version__}, TRL's GRPOTrainer with
SCoRe's two-attempt rollout; Kumar et al. 2024, arXiv 2409.12917) with {tuning}, rewarded by {reward}.

- Stage I ({config.stage1_steps} steps): reward r(y2) on the second attempt, KL weight {config.beta2} on the first
  attempt and {config.beta1} on the second.
- Stage II ({config.stage2_steps} steps): r(y1) on the first attempt, r(y2) + {config.alpha}·(r(y2) − r(y1)) on the
  second, KL weight {config.beta1} on both. Leave-one-out baseline over {config.num_generations} rollouts per problem.
- The second attempt reads the problem, the first attempt and the self-correction instruction:
  "{config.instructions()[0]}"

## Run
| figure | value |
|---|---|
{figures}

Both attempts' rewards per step are in the run folder's `score_log.jsonl` and `score_curve.png`.
Measure self-correction with `rlaif self-correct --model <this folder> --problems FILE --out DIR`.

## Config
```json
{json.dumps(settings, indent=2, ensure_ascii=False, default=str)}
```
"""
    path = dest / "README.md"
    path.write_text(text, encoding="utf-8")
    return path
