"""Equivalence with Hugging Face transformers' ViTMAEForPreTraining through our name conversion."""
import pytest
import torch

from model import MaskedAutoencoderViT, hf_to_mae_state_dict, load_checkpoint, mae_to_hf_state_dict
from model.checkpoint import hf_config_kwargs
from model.pos_embed import sincos_2d

transformers = pytest.importorskip("transformers")
from transformers import ViTMAEConfig, ViTMAEForPreTraining  # noqa: E402

CFG = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
           decoder_embed_dim=48, decoder_depth=2, decoder_num_heads=4)


def pair(norm_pix=True, attn="sdpa"):
    torch.manual_seed(0)
    ours = MaskedAutoencoderViT(**CFG, norm_pix_loss=norm_pix).eval()
    with torch.no_grad():  # make biases and norms non-trivial so a mis-mapped tensor cannot hide
        for name, p in ours.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf = ViTMAEForPreTraining(ViTMAEConfig(**hf_config_kwargs(ours.config), attn_implementation=attn))
    hf.load_state_dict(mae_to_hf_state_dict(ours.state_dict()), strict=True)
    return ours, hf.eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("norm_pix", [True, False])
def test_same_weights_same_noise_same_loss_and_predictions(norm_pix, attn):
    ours, hf = pair(norm_pix, attn)
    assert hf.config.layer_norm_eps == 1e-6 and hf.config.qkv_bias
    x, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)
    with torch.no_grad():
        loss, pred, mask = ours(x, mask_ratio=0.75, noise=noise)
        out = hf(pixel_values=x, noise=noise)
    assert torch.equal(mask, out.mask)
    assert torch.allclose(pred, out.logits, atol=1e-5, rtol=0)
    assert abs(loss.item() - out.loss.item()) < 1e-5
    # and the encoders agree token for token
    with torch.no_grad():
        latent, _, ids_restore = ours.forward_encoder(x, 0.75, noise=noise)
        hf_latent = hf.vit(pixel_values=x, noise=noise)
    assert torch.allclose(latent, hf_latent.last_hidden_state, atol=1e-5)
    assert torch.equal(ids_restore, hf_latent.ids_restore)


def test_gradients_agree():
    ours, hf = pair()
    ours.train(), hf.train()
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    ours(x, noise=noise)[0].backward()
    hf(pixel_values=x, noise=noise).loss.backward()
    g_ours = {k: p.grad for k, p in ours.named_parameters() if p.grad is not None}
    g_hf = hf_to_mae_state_dict({k: p.grad for k, p in hf.named_parameters() if p.grad is not None})
    assert set(g_ours) == set(g_hf)
    for k in g_ours:
        assert torch.allclose(g_ours[k], g_hf[k], atol=1e-5), k


@pytest.mark.parametrize("layout", ["v4", "v5"])
def test_conversion_round_trip(layout):
    ours, _ = pair()
    sd = ours.state_dict()
    hf_sd = mae_to_hf_state_dict(sd, layout=layout)
    if layout == "v4":
        assert "vit.encoder.layer.0.attention.attention.query.weight" in hf_sd
        assert "decoder.decoder_layers.1.intermediate.dense.bias" in hf_sd
    back = hf_to_mae_state_dict(hf_sd)
    assert list(back) and set(back) == set(sd)
    assert all(torch.equal(back[k], v) for k, v in sd.items())


def test_load_checkpoint_reads_hugging_face_state_dicts(tmp_path):
    ours, hf = pair()
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    for layout in ("v5", "v4"):
        path = tmp_path / f"hf_{layout}.bin"
        torch.save(mae_to_hf_state_dict(ours.state_dict(), layout=layout), path)
        m = load_checkpoint(path, num_heads=4, decoder_num_heads=4)  # heads are not in a state dict
        assert m.loaded_from["format"] == "huggingface" and not m.loaded_from["encoder_only"]
        with torch.no_grad():
            assert torch.allclose(m(x, noise=noise)[1], ours(x, noise=noise)[1], atol=1e-6)
    # a bare ViTMAEModel (encoder only, no "vit." prefix)
    enc = {k[len("vit."):]: v for k, v in mae_to_hf_state_dict(ours.state_dict(), "v5").items() if k.startswith("vit.")}
    m = load_checkpoint(enc, num_heads=4)
    assert m.loaded_from["encoder_only"]
    assert torch.allclose(m.forward_features(x), ours.forward_features(x), atol=1e-6)


def test_position_tables_match_hugging_face_layout():
    """HF's builder gives [sin_h|cos_h|sin_w|cos_w] and rotates the halves to match the official tables."""
    from transformers.models.vit_mae import modeling_vit_mae as hf_mod
    if not hasattr(hf_mod, "build_2d_sinusoidal_position_embedding"):
        pytest.skip("this transformers version has no standalone position-table builder")
    pe = hf_mod.build_2d_sinusoidal_position_embedding(5, 5, 64, cls_token=True)
    pe = torch.cat([pe[..., 32:], pe[..., :32]], dim=-1)
    assert torch.allclose(sincos_2d(64, 5, cls_token=True), pe.float(), atol=1e-6)
