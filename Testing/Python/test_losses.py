"""Losses checked against values computed by hand with plain Python arithmetic."""

import math

import pytest
import torch

from CPCSAMLib.losses import (
    ce_loss,
    cross_prompting_loss,
    dice_ce,
    dice_loss,
    probs,
    prompt_consistency_loss,
    pseudo_label,
    supervised_prompted,
    supervised_unprompted,
)

S = 1e-5
LOG3 = math.log(3.0)


def _logits_quarter():
    """[1, 2, 2, 2]: every pixel has logits (0, log 3) -> p = (0.25, 0.75)."""
    lg = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    lg[:, 1] = LOG3
    return lg


TARGET = torch.tensor([[[1, 0], [1, 1]]])  # one background pixel, three foreground


def _hand_dice_quarter():
    # class 0: p = 0.25 everywhere, t0 = [0, 1, 0, 0]
    d0 = (2 * 0.25 + S) / (4 * 0.25 ** 2 + 1 + S)
    # class 1: p = 0.75 everywhere, t1 = [1, 0, 1, 1]
    d1 = (2 * 3 * 0.75 + S) / (4 * 0.75 ** 2 + 3 + S)
    return ((1 - d0) + (1 - d1)) / 2, (1 - d1)


def _hand_ce_quarter():
    return (3 * -math.log(0.75) + -math.log(0.25)) / 4


def test_dice_by_hand():
    full, fg_only = _hand_dice_quarter()
    assert dice_loss(_logits_quarter(), TARGET).item() == pytest.approx(full, abs=1e-7)
    assert dice_loss(_logits_quarter(), TARGET, include_background=False).item() == pytest.approx(
        fg_only, abs=1e-7)


def test_dice_pools_batch_and_pixels():
    # two samples, 1x2 pixels each, logits (0, log 3) in sample 0 and (log 3, 0) in sample 1
    lg = torch.zeros(2, 2, 1, 2, dtype=torch.float64)
    lg[0, 1] = LOG3
    lg[1, 0] = LOG3
    tgt = torch.tensor([[[1, 1]], [[1, 0]]])
    p1 = [0.75, 0.75, 0.25, 0.25]  # foreground probability of the 4 pixels, batch order
    t1 = [1, 1, 1, 0]
    p0 = [1 - v for v in p1]
    t0 = [1 - v for v in t1]

    def dice(p, t):
        inter = sum(a * b for a, b in zip(p, t))
        return (2 * inter + S) / (sum(a * a for a in p) + sum(b * b for b in t) + S)

    expected = ((1 - dice(p0, t0)) + (1 - dice(p1, t1))) / 2
    assert dice_loss(lg, tgt).item() == pytest.approx(expected, abs=1e-7)


def test_ce_by_hand():
    assert ce_loss(_logits_quarter(), TARGET).item() == pytest.approx(_hand_ce_quarter(), abs=1e-7)


def test_perfect_prediction_gives_zero_loss():
    tgt = torch.tensor([[[0, 1, 2], [2, 1, 0]]])
    lg = 60.0 * torch.nn.functional.one_hot(tgt, 3).permute(0, 3, 1, 2).double()
    assert dice_loss(lg, tgt).item() == pytest.approx(0.0, abs=1e-6)
    assert ce_loss(lg, tgt).item() == pytest.approx(0.0, abs=1e-6)


def test_weighted_sums():
    d, _ = _hand_dice_quarter()
    c = _hand_ce_quarter()
    lg = _logits_quarter()
    assert supervised_unprompted(lg, TARGET).item() == pytest.approx(0.8 * d + 0.2 * c, abs=1e-7)
    assert supervised_prompted(lg, TARGET).item() == pytest.approx(0.5 * d + 0.5 * c, abs=1e-7)
    assert dice_ce(lg, TARGET, 2.0, 3.0).item() == pytest.approx(2 * d + 3 * c, abs=1e-7)


def test_probs_and_pseudo_label_is_argmax_of_mean_without_grad():
    # pixel 0: a=(0.9, 0.1), b=(0.4, 0.6) -> mean (0.65, 0.35) -> 0 although argmax(b) = 1
    # pixel 1: a=(0.45, 0.55), b=(0.6, 0.4) -> mean (0.525, 0.475) -> 0 although argmax(a) = 1
    # pixel 2: a=(0.3, 0.7), b=(0.8, 0.2) -> mean (0.55, 0.45) -> 0
    # pixel 3: a=(0.2, 0.8), b=(0.7, 0.3) -> mean (0.45, 0.55) -> 1
    a1 = torch.tensor([0.1, 0.55, 0.7, 0.8])
    b1 = torch.tensor([0.6, 0.4, 0.2, 0.3])
    a = torch.stack([1 - a1, a1]).reshape(1, 2, 2, 2).requires_grad_(True)
    b = torch.stack([1 - b1, b1]).reshape(1, 2, 2, 2).requires_grad_(True)
    pl = pseudo_label(a, b)
    assert pl.dtype == torch.long and pl.shape == (1, 2, 2)
    assert pl.flatten().tolist() == [0, 0, 0, 1]
    assert not pl.requires_grad and pl.grad_fn is None
    assert pseudo_label(b).flatten().tolist() == [1, 0, 0, 0]
    # a threshold turns pixels whose mean probability of their class is below it into background
    c1 = torch.tensor([0.9, 0.65, 0.3, 0.5])  # class-1 probabilities; pixel 2 is confident background
    c = torch.stack([1 - c1, c1]).reshape(1, 2, 2, 2)
    assert pseudo_label(c).flatten().tolist() == [1, 1, 0, 0]
    assert pseudo_label(c, threshold=0.6).flatten().tolist() == [1, 1, 0, 0]
    assert pseudo_label(c, threshold=0.7).flatten().tolist() == [1, 0, 0, 0]
    assert pseudo_label(c, threshold=0.75).flatten().tolist() == [1, 0, 0, 0]
    three = torch.tensor([0.2, 0.45, 0.35]).reshape(1, 3, 1, 1)  # class 1 wins with 0.45
    assert pseudo_label(three).item() == 1 and pseudo_label(three, threshold=0.5).item() == 0
    p = probs(_logits_quarter())
    assert p[0, :, 0, 0].tolist() == pytest.approx([0.25, 0.75])


def test_cross_prompting_loss_by_hand():
    d, _ = _hand_dice_quarter()
    c = _hand_ce_quarter()
    p1 = _logits_quarter()
    p2 = _logits_quarter().flip(1)  # p = (0.75, 0.25) everywhere
    t2 = torch.tensor([[[0, 0], [1, 0]]])  # mirrored problem of (p1, TARGET): same Dice and CE
    expected = 0.5 * (d + c) + 0.5 * (d + c)
    assert cross_prompting_loss(p1, p2, TARGET, t2).item() == pytest.approx(expected, abs=1e-7)
    assert prompt_consistency_loss(p1, p2, TARGET, t2).item() == pytest.approx(expected, abs=1e-7)
    # different targets per branch: each half is weighted 1/2
    zero_t2 = torch.zeros(1, 2, 2, dtype=torch.long)
    mixed = 0.5 * (d + c) + 0.5 * dice_ce(p2, zero_t2).item()
    assert cross_prompting_loss(p1, p2, TARGET, zero_t2).item() == pytest.approx(mixed, abs=1e-7)


def test_gradients_reach_outputs_not_targets():
    torch.manual_seed(0)
    p1 = torch.randn(2, 3, 4, 4, requires_grad=True)   # unprompted, decoder 1
    p2 = torch.randn(2, 3, 4, 4, requires_grad=True)   # unprompted, decoder 2
    c1 = torch.randn(2, 3, 4, 4, requires_grad=True)   # centre-prompted, decoder 1
    r1 = torch.randn(2, 3, 4, 4, requires_grad=True)   # random-prompted, decoder 1
    c2 = torch.randn(2, 3, 4, 4, requires_grad=True)
    r2 = torch.randn(2, 3, 4, 4, requires_grad=True)
    t1 = pseudo_label(probs(c1), probs(r1))  # ensemble of decoder 1
    t2 = pseudo_label(probs(c2), probs(r2))
    loss = cross_prompting_loss(p1, p2, t2, t1) + prompt_consistency_loss(r1, r2, t1, t2)
    loss.backward()
    for t in (p1, p2, r1, r2):
        assert t.grad is not None and t.grad.abs().sum() > 0
    assert c1.grad is None and c2.grad is None


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        dice_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError):
        ce_loss(torch.zeros(2, 3, 3), torch.zeros(2, 3, dtype=torch.long))
