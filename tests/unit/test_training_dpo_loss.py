"""The preference losses on hand-computed values."""

import math

import pytest
import torch

from training.dpo_loss import preference_losses


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_sigmoid_loss_is_log2_when_policy_equals_reference_and_falls_as_the_margin_grows() -> None:
    same = preference_losses(_t(-5.0), _t(-7.0), _t(-5.0), _t(-7.0), beta=0.1)
    assert same.loss.item() == pytest.approx(math.log(2))
    assert same.margin.item() == 0 and same.correct.item() == 0
    better = preference_losses(_t(-4.0), _t(-8.0), _t(-5.0), _t(-7.0), beta=0.5)
    # margin of log-ratios (1) - (-1) = 2; beta * 2 = 1
    assert better.loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))
    assert better.chosen_reward.item() == pytest.approx(0.5) and better.rejected_reward.item() == pytest.approx(-0.5)
    assert better.correct.item() == 1


def test_label_smoothing_mixes_the_flipped_loss() -> None:
    e = 0.2
    out = preference_losses(_t(-4.0), _t(-8.0), _t(-5.0), _t(-7.0), beta=0.5, label_smoothing=e)
    logsig = lambda x: -math.log(1 + math.exp(-x))  # noqa: E731
    assert out.loss.item() == pytest.approx(-(1 - e) * logsig(1.0) - e * logsig(-1.0))


def test_ipo_compares_per_token_means_against_half_inverse_beta() -> None:
    out = preference_losses(
        _t(-4.0),
        _t(-8.0),
        _t(-5.0),
        _t(-7.0),
        beta=0.25,
        loss_type="ipo",
        chosen_tokens=_t(2.0),
        rejected_tokens=_t(4.0),
    )
    margin = 1.0 / 2 - (-1.0) / 4  # 0.75
    assert out.loss.item() == pytest.approx((margin - 1 / (2 * 0.25)) ** 2)
    with pytest.raises(ValueError, match="chosen_tokens"):
        preference_losses(_t(0.0), _t(0.0), _t(0.0), _t(0.0), beta=0.1, loss_type="ipo")
    with pytest.raises(ValueError, match="loss_type"):
        preference_losses(_t(0.0), _t(0.0), _t(0.0), _t(0.0), beta=0.1, loss_type="hinge")


def test_sft_weight_adds_the_chosen_completions_per_token_nll() -> None:
    plain = preference_losses(
        _t(-4.0), _t(-8.0), _t(-5.0), _t(-7.0), beta=0.5, chosen_tokens=_t(2.0), rejected_tokens=_t(4.0)
    )
    mixed = preference_losses(
        _t(-4.0), _t(-8.0), _t(-5.0), _t(-7.0), beta=0.5, sft_weight=0.3, chosen_tokens=_t(2.0), rejected_tokens=_t(4.0)
    )
    assert plain.chosen_nll.item() == pytest.approx(2.0)  # -(-4) / 2 tokens
    assert mixed.loss.item() == pytest.approx(plain.loss.item() + 0.3 * 2.0)
    assert mixed.margin.item() == plain.margin.item()  # the rewards stay the preference's
    with pytest.raises(ValueError, match="sft_weight"):
        preference_losses(_t(0.0), _t(0.0), _t(0.0), _t(0.0), beta=0.1, sft_weight=1.0)
