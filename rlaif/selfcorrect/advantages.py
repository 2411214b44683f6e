"""SCoRe's per-token advantages and KL weights (Kumar et al. 2024, Eq. 3 and 4).

One rollout is x → y1 → bridge → y2, and the trainer's completion is y1 ⊕ bridge ⊕ y2
(the bridge masked from the loss). With k rollouts per problem and the leave-one-out
baseline  LOO(r)_i = r_i − (1/(k−1)) Σ_{j≠i} r_j  over a problem's k rollouts:

    stage I  (Eq. 3):  y1 tokens: advantage 0,              KL weight β2
                       y2 tokens: advantage LOO(r2),        KL weight β1
    stage II (Eq. 4):  y1 tokens: advantage LOO(r1),        KL weight β1
                       y2 tokens: advantage LOO(r2 + b),    KL weight β1,   b = α·(r2 − r1)

Each attempt's tokens get only their own reward (γ = 0 credit): y1's tokens never see
r2 or the bonus. The reference of the KL term is the base policy in both stages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

STAGES = (1, 2)


def leave_one_out(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """r_i minus the mean of the other k − 1 rewards of its problem; rows come in consecutive groups of k."""
    if k < 2:
        raise ValueError(f"the leave-one-out baseline needs k >= 2 samples per problem, got k={k}")
    if rewards.numel() % k:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of k={k}")
    groups = rewards.reshape(-1, k).to(torch.float64)
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (k - 1)
    return (groups - baseline).reshape(-1).to(rewards.dtype)


def attempt_advantages(r1: torch.Tensor, r2: torch.Tensor, k: int, stage: int,
                       alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantage of y1's tokens, advantage of y2's tokens), one value per rollout."""
    if stage == 1:
        return torch.zeros_like(r1), leave_one_out(r2, k)
    if stage == 2:
        return leave_one_out(r1, k), leave_one_out(r2 + alpha * (r2 - r1), k)
    raise ValueError(f"stage must be 1 or 2, got {stage}")


def attempt_kl_weights(stage: int, beta1: float, beta2: float) -> tuple[float, float]:
    """(KL weight on y1's tokens, KL weight on y2's tokens)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    return (beta2, beta1) if stage == 1 else (beta1, beta1)


def token_tensors(segments: Sequence[Sequence[int]], width: int, adv1: torch.Tensor, adv2: torch.Tensor,
                  kl1: float, kl2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, width) advantages and KL weights over completions laid out as y1 ⊕ bridge ⊕ y2 ⊕ padding.

    `segments[i]` = (len y1, len bridge, len y2) of row i. Bridge and padding get 0 in both.
    """
    advantages = torch.zeros(len(segments), width, dtype=torch.float32)
    weights = torch.zeros(len(segments), width, dtype=torch.float32)
    for row, (n1, nb, n2) in enumerate(segments):
        if n1 + nb + n2 > width:
            raise ValueError(f"row {row}: segments {n1}+{nb}+{n2} exceed the completion width {width}")
        start2 = n1 + nb
        advantages[row, :n1] = float(adv1[row])
        advantages[row, start2:start2 + n2] = float(adv2[row])
        weights[row, :n1] = kl1
        weights[row, start2:start2 + n2] = kl2
    return advantages, weights
