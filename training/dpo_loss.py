"""Preference losses on summed completion log-probabilities: sigmoid DPO (with label smoothing) and IPO, plus an
optional supervised term on the chosen completion.

Inputs are per pair: the policy's and the reference's log-probability of the chosen and of the rejected
completion (sums over the completion's loss tokens), and the completions' token counts (IPO compares per-token
means; the supervised term is the chosen completion's per-token negative log-likelihood). Outputs are per pair,
so a caller can weight and sum them over a global batch.

Why a supervised term: the DPO loss only sees the margin, and it is often reached by pushing both completions
down. On a recommender whose chosen completion is the title the member liked, that lowers the liked titles'
likelihood and with it the ranking metrics the SFT model earned; weighting in the chosen completion's NLL keeps
it up while the margin grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PairLosses:
    loss: torch.Tensor  # [pairs]
    chosen_reward: torch.Tensor  # [pairs] beta * (policy - reference) log-prob of chosen, detached
    rejected_reward: torch.Tensor  # [pairs]
    chosen_nll: torch.Tensor | None  # [pairs] per-token NLL of the chosen completion (policy), detached; needs counts

    @property
    def margin(self) -> torch.Tensor:
        return self.chosen_reward - self.rejected_reward

    @property
    def correct(self) -> torch.Tensor:
        """1 where the chosen completion gets the higher implicit reward (preference accuracy)."""
        return (self.margin > 0).to(self.loss.dtype)


def preference_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    sft_weight: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> PairLosses:
    """Per-pair loss and implicit rewards.

    sigmoid: -(1 - e) log sigmoid(beta * m) - e log sigmoid(-beta * m), m the log-ratio margin
    ``(pc - rc) - (pr - rr)``. ipo: (m' - 1 / (2 beta))^2 with m' the margin of per-token means. Either, plus
    ``sft_weight * (-pc / chosen_tokens)``.
    """
    if (loss_type == "ipo" or sft_weight) and (chosen_tokens is None or rejected_tokens is None):
        raise ValueError("ipo and sft_weight use per-token means: pass chosen_tokens and rejected_tokens")
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    if loss_type == "sigmoid":
        logits = beta * (chosen_ratio - rejected_ratio)
        loss = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    elif loss_type == "ipo":
        margin = chosen_ratio / chosen_tokens - rejected_ratio / rejected_tokens
        loss = (margin - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type must be 'sigmoid' or 'ipo', got {loss_type!r}")
    chosen_nll = None if chosen_tokens is None else -policy_chosen / chosen_tokens
    if sft_weight:
        loss = loss + sft_weight * chosen_nll
    return PairLosses(
        loss,
        (beta * chosen_ratio).detach(),
        (beta * rejected_ratio).detach(),
        None if chosen_nll is None else chosen_nll.detach(),
    )
