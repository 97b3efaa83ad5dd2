"""One training step: one encoder pass, gradients where the paper puts them, the schedule."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning)

from CPCSAMLib.modeling.backbones import build_backbone  # noqa: E402
from CPCSAMLib.modeling.dual_sam import DualBranchSAM  # noqa: E402
from CPCSAMLib.objective import CPCObjective  # noqa: E402
from CPCSAMLib.train import TrainConfig, learning_rate  # noqa: E402


def _batch():
    g = torch.Generator().manual_seed(0)
    xl = torch.rand(1, 1, 256, 256, generator=g)
    yl = torch.zeros(1, 256, 256, dtype=torch.long)
    yl[0, 100:160, 90:170] = 1
    xu = torch.rand(1, 1, 256, 256, generator=g)
    return xl, yl, xu


@pytest.mark.parametrize("method", ["cpcsam", "supervised"])
def test_step_runs_encoder_once_and_reaches_all_trainable_parts(method):
    model = DualBranchSAM(build_backbone("litemedsam"), num_classes=1)
    model.train()
    calls = []
    model.image_encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    obj = CPCObjective(model, method)
    xl, yl, xu = _batch()
    out = obj(xl, yl, xu, np.random.default_rng(0))
    out["loss"].backward()
    assert len(calls) == 1  # one encoder pass for the whole step
    assert calls[0] == (2 if method == "cpcsam" else 1)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".lora_" in n)
    for part in ("decoder1.", "decoder2.", "prompt_encoder.point_embeddings"):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(part)), part
    if method == "supervised":
        assert out["loss_cross"] == 0 and out["loss_c"] == 0
    else:
        assert out["loss_cross"] > 0 and out["loss_c"] > 0
        expected = out["loss_s"] + 0.4 * out["loss_cross"] + 0.05 * out["loss_c"]
        assert torch.isclose(out["loss"].detach(), expected, rtol=1e-5)


def test_learning_rate_schedule():
    cfg = TrainConfig(iterations=100, warmup_iters=10, lr=1e-3)
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 9) == pytest.approx(1e-3)
    assert learning_rate(cfg, 10) == pytest.approx(1e-3)
    assert learning_rate(cfg, 100) == pytest.approx(1e-5)  # exponential to lr * 0.01
    poly = TrainConfig(iterations=100, warmup_iters=10, lr=1e-3, lr_decay="poly")
    assert learning_rate(poly, 55) == pytest.approx(1e-3 * 0.5 ** 0.9)
    assert TrainConfig(iterations=10000).warmup == 5000 and TrainConfig(iterations=300).warmup == 150


def test_official_structure_three_rounds_each_with_encoder_and_whole_batch_decoders():
    """The comparison baseline for the speed table: the official loop's rounds (trainer_dualmask.py)."""
    model = DualBranchSAM(build_backbone("litemedsam"), num_classes=1)
    model.train()
    enc, dec = [], []
    model.image_encoder.register_forward_hook(lambda m, i, o: enc.append(i[0].shape[0]))
    for k in (1, 2):
        getattr(model, f"decoder{k}").register_forward_hook(lambda m, i, o, k=k: dec.append((k, i[0].shape[0])))
    xl, yl, xu = _batch()
    rounds = CPCObjective(model, "cpcsam").sequential_rounds(xl, yl, xu, np.random.default_rng(0))
    per_round = []
    for loss in rounds:
        assert loss.requires_grad and torch.isfinite(loss)
        loss.backward()  # each round has its own backward (and, in training, its own optimiser step)
        per_round.append(list(dec))
        dec.clear()
    assert enc == [2, 2, 2]  # an encoder forward over the whole batch per round
    assert per_round == [[(1, 2), (2, 2)], [(2, 2), (1, 2), (1, 2)], [(1, 2), (2, 2), (2, 2)]]
