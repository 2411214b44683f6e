"""Pieces every rlaif RL trainer shares (ppo, grpo/rloo, and trainers built on them).

- `resolve_policy`, `load_policy_tokenizer`, `check_context`: the policy as users name it.
- `lora_config`: LoRA on every linear layer but the output head; with it TRL's trainers
  take the adapter-disabled base as the reference policy instead of a second copy.
- `plot_log`, `save_policy` (LoRA merged into a plain model directory, the adapter
  beside it), `write_policy_card` (the model card).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlaif import __version__
from rlaif.errors import RlaifError
from rlaif.io import read_rows

logger = logging.getLogger(__name__)


def resolve_policy(policy: str) -> str:
    """`default` is the embedded Gemma 3 270M (converted once and cached); anything else as given."""
    from rlaif.backends.hf.default import default_model_dir, is_default  # noqa: PLC0415 (imports torch)

    return str(default_model_dir()) if is_default(policy) else policy


def load_policy_tokenizer(policy: str) -> Any:
    """The policy's tokenizer, with a pad token (EOS if it has none)."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    try:
        tokenizer = AutoTokenizer.from_pretrained(policy)
    except (OSError, ValueError) as err:
        raise RlaifError(f"Cannot load the policy tokenizer from {policy!r}: {err}. Give a model directory.") from err
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise RlaifError(f"Policy {policy} has neither a pad nor an EOS token; add a pad token to its tokenizer.")
        logger.warning("The policy tokenizer has no pad token; using EOS %r (EOS inside prompts is then masked).",
                       tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy_model(policy: str) -> Any:
    """The policy as a float32 causal LM (TRL's default dtype; bf16 autocast is set on the trainer)."""
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    try:
        return AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise RlaifError(f"Cannot load policy {policy!r} as a causal LM: {err}.") from err


def check_context(model: Any, prompt_tokens: int, response_tokens: int) -> None:
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if limit and prompt_tokens + response_tokens > limit:
        raise RlaifError(
            f"Prompts of {prompt_tokens} tokens + responses of {response_tokens} exceed the policy's context "
            f"of {limit}; lower --max-prompt-length or the response length."
        )


def use_bf16() -> bool:
    """bf16 autocast only on a CUDA device that has it (TRL's GRPO defaults to bf16 even on CPU)."""
    import torch  # noqa: PLC0415

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def lora_config(r: int, alpha: float, task_type: str = "CAUSAL_LM", modules_to_save: Sequence[str] = ()) -> Any:
    """LoRA of rank r on all linear layers except the output head (PEFT's `all-linear`)."""
    try:
        from peft import LoraConfig  # noqa: PLC0415
    except ImportError as err:
        raise RlaifError("--lora-r needs peft: pip install 'rlaif[lora]' (from a clone: pip install -e '.[lora]').") from err
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear", task_type=task_type,
                      modules_to_save=list(modules_to_save) or None)


def count_parameters(model: Any) -> dict[str, int]:
    params = list(model.parameters())
    return {"total": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in params if p.requires_grad)}


def plot_log(log_path: str | Path, png_path: str | Path, panels: Sequence[tuple[str, str]],
             xlabel: str = "step") -> Path | None:
    """One panel per (key, title) over the log's steps; None (with a warning) without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        logger.warning("matplotlib is not installed, so no %s: pip install 'rlaif[plot]'.", png_path)
        return None
    rows = read_rows(log_path) if Path(log_path).exists() and Path(log_path).stat().st_size else []
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        points = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
        ax.plot([step for step, _ in points], [value for _, value in points], marker="o", markersize=3)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return Path(png_path)


def save_policy(model: Any, tokenizer: Any, dest: Path) -> dict[str, str]:
    """Save the trained policy as a plain model directory at `dest`, replacing it only when complete.

    A LoRA policy is saved twice: the adapter alone (`dest` + `-adapter`) and merged into
    the base weights (`dest`), so `dest` loads with `AutoModelForCausalLM` like any model.
    """
    paths = {"policy_dir": str(dest)}
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if hasattr(model, "merge_and_unload"):  # a peft model
        adapter = dest.with_name(dest.name + "-adapter")
        model.save_pretrained(str(adapter))
        paths["adapter_dir"] = str(adapter)
        model = model.merge_and_unload()
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.replace(dest)
    return paths


def write_policy_card(dest: Path, *, algorithm: str, base_model: str, reward: str, summary: dict[str, Any],
                      config: dict[str, Any], lora: dict[str, Any] | None) -> Path:
    """README.md (the model card) of a policy trained by rlaif: what, from what, against which reward, figures."""
    method = {"ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO"}.get(algorithm, algorithm.upper())
    tuning = (f"LoRA (r={lora['r']}, alpha={lora['alpha']}, all linear layers), merged into the base weights; "
              "the adapter alone is saved beside this folder" if lora else "full fine-tuning")
    figures = "\n".join(f"| {key} | {_cell(value)} |" for key, value in summary.items())
    text = f"""---
library_name: transformers
base_model: {base_model}
pipeline_tag: text-generation
tags: [rlaif, trl, {algorithm}]
---

# Policy trained with rlaif ({method})

Fine-tuned from `{base_model}` by `rlaif {'ppo' if algorithm == 'ppo' else 'grpo'}` (rlaif {__version__}, TRL's
{method} trainer) with {tuning}, rewarded by {reward}.

## Run
| figure | value |
|---|---|
{figures}

Rewards and KL per step are in the run folder's log (`{algorithm if algorithm == 'ppo' else 'grpo'}_log.jsonl`)
and curve (PNG).

## Config
```json
{json.dumps(config, indent=2, ensure_ascii=False, default=str)}
```

## Use
```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{dest.name}")
tokenizer = AutoTokenizer.from_pretrained("{dest.name}")
```
"""
    path = dest / "README.md"
    path.write_text(text, encoding="utf-8")
    return path


def describe_reward(settings: Any) -> str:
    if getattr(settings, "reward_fn", None):
        return f"the function `{settings.reward_fn}`"
    if getattr(settings, "reward_model", None):
        return f"the reward model `{settings.reward_model}`"
    principle = f", principle {settings.principle}" if settings.principle else ""
    return f"d-RLAIF (feedback model `{settings.feedback_model}`, constitution {settings.constitution}{principle})"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)
