"""The soft-label reward-model loss (its own module: the trainer and the API both use it, torch loads lazily)."""

from __future__ import annotations

from typing import Any


def soft_label_loss(r_a: Any, r_b: Any, p: Any, reduction: str = "mean") -> Any:
    """-(p log sigma(r_a - r_b) + (1 - p) log sigma(r_b - r_a)), averaged over pairs ("none": per pair)."""
    import torch.nn.functional as F  # noqa: N812, PLC0415 (keep torch out of CLI start-up)

    delta = r_a - r_b
    loss = -(p * F.logsigmoid(delta) + (1.0 - p) * F.logsigmoid(-delta))
    return loss.mean() if reduction == "mean" else loss
