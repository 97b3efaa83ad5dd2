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
    assert not torch.equal(model.decoder1.mask_tokens.weight, model.decoder2.mask_tokens.weight)
    out = model.decode(1, emb)
    assert out.shape == (1, 3, 256, 256)
    coords = torch.tensor([[[100.0, 120.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, -1]])  # class 2 absent: padding point
    out_p = model.decode(2, emb, coords, labels)
    assert out_p.shape == (1, 3, 256, 256)
    probs = model.predict_probs(x)
    assert torch.allclose(probs.sum(1), torch.ones(1, 256, 256), atol=1e-5)


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


def test_pretrained_decoder_init_copies_sam_weights(lite):
    model = DualBranchSAM(lite, num_classes=1, decoder_init="pretrained")
    src = lite.mask_decoder
    assert torch.equal(model.decoder1.transformer.layers[0].self_attn.q_proj.weight,
                       src.transformer.layers[0].self_attn.q_proj.weight)
    assert torch.equal(model.decoder1.mask_tokens.weight[1], src.mask_tokens.weight[1])


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
