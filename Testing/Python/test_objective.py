"""One training step: one encoder pass, gradients where the paper puts them, the schedule."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning)

from CPCSAMLib import losses  # noqa: E402
from CPCSAMLib.modeling.backbones import build_backbone  # noqa: E402
from CPCSAMLib.modeling.dual_sam import DualBranchSAM  # noqa: E402
from CPCSAMLib.objective import CPCObjective  # noqa: E402
from CPCSAMLib.config import TrainConfig  # noqa: E402
from CPCSAMLib.training.schedule import learning_rate, warmup_length  # noqa: E402


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
    for part in ("decoder1.", "decoder2.", "prompt_encoder.box_class_embeddings"):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(part)), part
    if method == "supervised":
        assert out["loss_cross"] == 0 and out["loss_c"] == 0
    else:
        assert out["loss_cross"] > 0 and out["loss_c"] > 0
        expected = out["loss_s"] + 0.4 * out["loss_cross"] + 0.05 * out["loss_c"]
        assert torch.isclose(out["loss"].detach(), expected, rtol=1e-5)


def _lora_and_decoder_grads(model, obj, xl, yl, xu, supervised_only=False):
    model.zero_grad(set_to_none=True)
    obj(xl, yl, xu, np.random.default_rng(0), supervised_only)["loss"].backward()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    lora = torch.cat([p.grad.flatten() for n, p in named if ".lora_" in n])
    # the heads (prompt encoder, decoders); at initialisation on these random images decoder 1 is
    # saturated at background, so most of the unlabeled gradient is decoder 2's and the prompt encoder's
    dec = torch.cat([p.grad.flatten() for n, p in named if not n.startswith("image_encoder.") and p.grad is not None])
    return lora, dec


def test_unlabeled_losses_can_be_kept_off_the_encoder():
    """--no-unlabeled-trains-encoder: the encoder's LoRA gets exactly the labeled loss's gradient
    (as in the supervised warm-up's steps) while the decoders still learn from the unlabeled images;
    by default (the paper) the unlabeled losses reach the LoRA too."""
    torch.manual_seed(0)
    model = DualBranchSAM(build_backbone("litemedsam"), num_classes=1)
    model.train()
    xl, yl, xu = _batch()
    lora_sup, dec_sup = _lora_and_decoder_grads(model, CPCObjective(model, "cpcsam"), xl, yl, xu, supervised_only=True)
    off = CPCObjective(model, "cpcsam", unlabeled_trains_encoder=False)
    lora_off, dec_off = _lora_and_decoder_grads(model, off, xl, yl, xu)
    lora_on, dec_on = _lora_and_decoder_grads(model, CPCObjective(model, "cpcsam"), xl, yl, xu)
    assert lora_sup.abs().max() > 0
    unlabeled_part = (lora_on - lora_sup).abs().max()  # the paper's way: unlabeled losses reach the LoRA
    print(f"LoRA gradient: labeled {lora_sup.abs().max():.3g}, unlabeled part {unlabeled_part:.3g}, "
          f"off {(lora_off - lora_sup).abs().max():.3g}")
    assert unlabeled_part > 1e-3 * lora_sup.abs().max()
    assert (lora_off - lora_sup).abs().max() < 0.02 * unlabeled_part
    assert (dec_off - dec_sup).abs().max() > 1e-2 * dec_sup.abs().max()  # the decoders still learn from them
    assert torch.allclose(dec_off, dec_on, rtol=1e-3, atol=1e-3 * dec_on.abs().max())


def test_learning_rate_schedule():
    cfg = TrainConfig(iterations=100, warmup_iters=10, lr=1e-3, lr_decay="exp")
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 9) == pytest.approx(1e-3)
    assert learning_rate(cfg, 10) == pytest.approx(1e-3)
    assert learning_rate(cfg, 100) == pytest.approx(1e-5)  # exponential to lr * 0.01
    poly = TrainConfig(iterations=100, warmup_iters=10, lr=1e-3, lr_decay="poly")
    assert learning_rate(poly, 55) == pytest.approx(1e-3 * 0.5 ** 0.9)
    assert learning_rate(poly, 100) == 0.0  # poly (the default) ends at 0
    constant = TrainConfig(iterations=100, warmup_iters=10, lr=1e-3, lr_decay="constant")
    assert learning_rate(constant, 99) == pytest.approx(1e-3)
    assert learning_rate(poly, 55, horizon=200) > learning_rate(poly, 55)  # a longer horizon decays later
    assert warmup_length(TrainConfig(), 10000) == 250 and warmup_length(TrainConfig(), 300) == 15


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


def _frozen_setup(method, monkeypatch):
    """Frozen-encoder objective on fixed embeddings where decoder 1's unprompted prediction is empty
    and decoder 2's is a square: the prompts' origin is then visible in every prompted pass."""
    model = DualBranchSAM(build_backbone("litemedsam"), num_classes=1)
    obj = CPCObjective(model, method, frozen_encoder=True)
    emb = torch.randn(2, 256, 64, 64) * 0.1
    yl = torch.zeros(1, 256, 256, dtype=torch.long)
    yl[0, 100:160, 90:170] = 1
    square = torch.full((1, 2, 256, 256), -5.0)
    square[:, 0] = 0
    square[:, 1, 40:80, 50:120] = 5.0
    decode = model.decode

    def fake_decode(branch, embeddings, coords=None, labels=None):
        if coords is not None:
            return decode(branch, embeddings, coords, labels)
        base = decode(branch, embeddings)  # keeps the graph; the values are set below
        shaped = square.expand(embeddings.shape[0], -1, -1, -1).clone()
        if branch == 1:
            shaped[:, 1] = -5.0  # decoder 1 finds nothing
        return base * 0 + shaped

    monkeypatch.setattr(model, "decode", fake_decode)
    prompted = []
    decode_prompted = model.decode_prompted

    def record(branch, embeddings, prompts, which="center", unprompted=None):
        out = decode_prompted(branch, embeddings, prompts, which, unprompted)
        prompted.append((branch, which, embeddings.shape[0], prompts.present.clone(), out.detach()))
        return out

    monkeypatch.setattr(model, "decode_prompted", record)
    targets = {}
    original = losses.cross_prompting_loss

    def cross(p1, p2, t1, t2):
        targets["for_p1"], targets["for_p2"] = t1.clone(), t2.clone()
        return original(p1, p2, t1, t2)

    monkeypatch.setattr("CPCSAMLib.objective.losses.cross_prompting_loss", cross)
    return obj, emb, yl, prompted, targets


def test_cross_supervision_direction(monkeypatch):
    """Eq. 1: decoder 1's prediction prompts decoder 2, whose prompted output supervises decoder 1."""
    obj, emb, yl, prompted, targets = _frozen_setup("cpcsam", monkeypatch)
    out = obj(emb[:1], yl, emb[1:], np.random.default_rng(0))
    # the last four prompted passes are the unlabeled ones: centre D1, centre D2, random D1, random D2
    last = prompted[-4:]
    by = {(b, w): (present, o) for b, w, _, present, o in last}
    assert set(by) == {(1, "center"), (2, "center"), (1, "random"), (2, "random")}
    assert by[(1, "center")][0].all()  # decoder 1 is prompted from decoder 2's square
    assert not by[(2, "center")][0].any()  # decoder 2 is prompted from decoder 1's empty map
    # decoder 1's target is decoder 2's output for decoder 1's (empty) prompts: with no prompt that is
    # decoder 2's unprompted square; decoder 2's target is decoder 1's box-prompted output
    assert (targets["for_p1"][0, 40:80, 50:120] == 1).all() and targets["for_p1"].sum() == 40 * 70
    assert (targets["for_p2"] == by[(1, "center")][1].argmax(1)).float().mean() > 0.9
    assert out["loss_c"] > 0 and out["loss_cross"] > 0


def test_cross_prompting_ablation_has_no_random_prompts_on_unlabeled(monkeypatch):
    obj, emb, yl, prompted, targets = _frozen_setup("cross_prompting", monkeypatch)
    out = obj(emb[:1], yl, emb[1:], np.random.default_rng(0))
    labeled = prompted[:4]  # GT prompts, centre and random, both decoders
    assert [(b, w) for b, w, *_ in labeled] == [(1, "center"), (1, "random"), (2, "center"), (2, "random")]
    assert [(b, w) for b, w, *_ in prompted[4:]] == [(1, "center"), (2, "center")]
    assert out["loss_c"] == 0 and out["loss_cross"] > 0
    assert targets["for_p1"].sum() == 40 * 70  # decoder 2's square (no prompt from decoder 1)


def test_cps_ablation_uses_unprompted_outputs_crosswise(monkeypatch):
    obj, emb, yl, prompted, targets = _frozen_setup("cps", monkeypatch)
    out = obj(emb[:1], yl, emb[1:], np.random.default_rng(0))
    assert len(prompted) == 4  # only the labeled GT-prompted passes
    assert (targets["for_p1"][0, 40:80, 50:120] == 1).all()  # decoder 2's square supervises decoder 1
    assert (targets["for_p2"] == 0).all()  # decoder 1's empty map supervises decoder 2
    assert out["loss_c"] == 0 and out["loss_cross"] > 0


def test_point_prompts_still_work_for_sam_style_backbones():
    model = DualBranchSAM(build_backbone("litemedsam"), num_classes=2)
    obj = CPCObjective(model, "cpcsam", prompt_type="point", frozen_encoder=True)
    emb = torch.randn(2, 256, 64, 64) * 0.1
    yl = torch.zeros(1, 256, 256, dtype=torch.long)
    yl[0, 100:160, 90:170] = 1
    out = obj(emb[:1], yl, emb[1:], np.random.default_rng(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert model.prompt_encoder.point_embeddings.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        CPCObjective(model, "cpcsam", prompt_type="mask")


def test_negative_boxes_prompt_the_classes_the_reference_lacks_from_the_other_decoder():
    from CPCSAMLib.prompts import BoxPrompts

    model = DualBranchSAM(build_backbone("litemedsam"), num_classes=2)
    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    yl = torch.zeros(1, 256, 256, dtype=torch.long)
    yl[0, 100:160, 90:170] = 1  # class 1 only
    p1 = torch.zeros(1, 3, 256, 256)
    p1[0, 0] = 5.0  # decoder 1 sees background everywhere
    p2 = p1.clone()
    p2[0, 2, 20:40, 30:60] = 10.0  # decoder 2 sees a false class 2 in a square
    seen = {}
    decode = model.decode_prompted

    def spy(branch, emb_, prompts, which="center", unprompted=None):
        seen[(branch, which)] = prompts
        return decode(branch, emb_, prompts, which, unprompted)

    model.decode_prompted = spy
    plain = CPCObjective(model, "cpcsam", frozen_encoder=True).supervised_loss(emb, p1, p2, yl, np.random.default_rng(0))
    assert all(not p.present[0, 1] for p in seen.values())
    neg = CPCObjective(model, "cpcsam", frozen_encoder=True, negative_boxes=True)
    loss = neg.supervised_loss(emb, p1, p2, yl, np.random.default_rng(0))
    one, two = seen[(1, "center")], seen[(2, "center")]
    assert isinstance(one, BoxPrompts) and one.present[0].tolist() == [True, True]
    # decoder 1 gets decoder 2's false class-2 box (margin 0.1 of 30 x 20 px), decoder 2 none from decoder 1
    assert one.center[0, 1].tolist() == pytest.approx([27.0, 18.0, 62.0, 41.0])
    assert two.present[0].tolist() == [True, False]
    assert torch.equal(one.center[0, 0], two.center[0, 0])  # the reference's class-1 box for both
    assert loss.item() != pytest.approx(plain.item())  # the negative box's map is supervised as background
    assert not CPCObjective(model, "cpcsam", prompt_type="point", negative_boxes=True).negative_boxes


def test_agreed_prompts_drop_a_false_component_the_other_decoder_does_not_see():
    model = DualBranchSAM(build_backbone("litemedsam"), num_classes=2)
    emb = torch.randn(2, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    yl = torch.zeros(1, 256, 256, dtype=torch.long)
    yl[0, 100:160, 90:170] = 1
    fixed = {b: torch.zeros(2, 3, 256, 256) for b in (1, 2)}
    for b in (1, 2):
        fixed[b][:, 0] = 5.0
        fixed[b][:, 1, 100:160, 90:170] = 10.0  # both decoders see class 1 here
    fixed[1][:, 2, 20:40, 30:60] = 10.0  # decoder 1 alone sees a false class 2
    decode = model.decode

    def unprompted(branch, emb_, *args, **kwargs):
        return fixed[branch] if emb_.shape[0] == 2 and not args and not kwargs else decode(branch, emb_, *args, **kwargs)

    model.decode = unprompted
    seen = []
    decode_prompted = model.decode_prompted

    def spy(branch, emb_, prompts, which="center", unprompted=None):
        seen.append((branch, which, prompts))
        return decode_prompted(branch, emb_, prompts, which, unprompted)

    model.decode_prompted = spy
    for agreed, want in ((False, [True, True]), (True, [True, False])):
        seen.clear()
        obj = CPCObjective(model, "cpcsam", frozen_encoder=True, agreed_prompts=agreed)
        out = obj(emb[:1], yl, emb[1:], np.random.default_rng(0))
        assert torch.isfinite(out["loss"])
        # the last four passes are the cross steps; decoder 2 is prompted from decoder 1's map
        cross = {(b, w): p for b, w, p in seen[-4:]}
        assert cross[(2, "center")].present[0].tolist() == want
        assert cross[(1, "center")].present[0].tolist() == [True, False]
        assert torch.equal(cross[(2, "center")].center[0, 0], cross[(1, "center")].center[0, 0])


@pytest.mark.parametrize("method", ["cpcsam", "cross_prompting", "cps"])
def test_pseudo_label_threshold_tightens_every_unlabeled_target(method, monkeypatch):
    """Real LiteMedSAM decoders on real-weight embeddings of noise: the thresholded targets keep only
    foreground pixels of the plain targets, fewer of them, and reach L_cross (and L_c)."""
    model = DualBranchSAM(build_backbone("litemedsam"), num_classes=2)
    emb = torch.randn(2, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    yl = torch.zeros(1, 256, 256, dtype=torch.long)
    yl[0, 100:160, 90:170] = 1
    seen = []
    for name in ("cross_prompting_loss", "prompt_consistency_loss"):
        real = getattr(losses, name)

        def spy(a, b, t1, t2, _real=real, _name=name):
            seen.append((_name, t1.clone(), t2.clone()))
            return _real(a, b, t1, t2)

        monkeypatch.setattr(losses, name, spy)
    targets = {}
    for threshold in (None, 0.9):
        seen.clear()
        obj = CPCObjective(model, method, frozen_encoder=True, pseudo_label_threshold=threshold)
        with torch.no_grad():
            out = obj(emb[:1], yl, emb[1:], np.random.default_rng(0))
        assert torch.isfinite(out["loss"])
        targets[threshold] = list(seen)
    names = [n for n, _, _ in targets[None]]
    assert names == [n for n, _, _ in targets[0.9]]
    assert names.count("cross_prompting_loss") == 1
    assert names.count("prompt_consistency_loss") == (1 if method == "cpcsam" else 0)
    for (_, *plain), (_, *tight) in zip(targets[None], targets[0.9]):
        for p, t in zip(plain, tight):
            assert bool(((t > 0) <= (p == t)).all())  # a kept pixel keeps its class
            assert (t > 0).sum() <= (p > 0).sum()
    fg_plain = sum(int((t > 0).sum()) for _, *ts in targets[None] for t in ts)
    fg_tight = sum(int((t > 0).sum()) for _, *ts in targets[0.9] for t in ts)
    assert fg_tight < fg_plain
