"""Checkpoint formats: ours, official MAE (full / encoder-only), timm ViT; atomic saves; clear errors."""
from functools import partial

import pytest
import torch

from model import (MaskedAutoencoderViT, create_model, load_checkpoint, mae_to_timm_vit_state_dict,
                   save_model_state)
from model.checkpoint import heads_for_width, infer_config

# widths whose heads follow the official table, so an official-style file (no config) rebuilds exactly
OFFICIAL_STYLE = dict(img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2,
                      decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=2, norm_pix_loss=True)


def model(**kw):
    torch.manual_seed(0)
    return MaskedAutoencoderViT(**{**OFFICIAL_STYLE, **kw}).eval()


def perturbed(m):
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_our_checkpoint_round_trip_is_atomic(tmp_path):
    m = perturbed(create_model("mae_vit_pico_patch8_64", img_size=32, mask_sampler="block"))
    path = save_model_state(m, tmp_path / "ck" / "last.pth", epoch=3)
    assert [p.name for p in path.parent.iterdir()] == ["last.pth"]  # no temporary file left behind
    ck = torch.load(path, weights_only=True)
    assert ck["epoch"] == 3 and ck["model_config"] == m.config and ck["model_name"] == "mae_vit_pico_patch8_64"
    m2 = load_checkpoint(path)
    assert m2.config == m.config and m2.loaded_from["format"] == "mae" and not m2.training
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    # overwriting goes through the same rename
    save_model_state(m2, path)
    assert load_checkpoint(str(path)).mask_sampler == "block"


def test_official_full_checkpoint_loads_unchanged(tmp_path):
    m = perturbed(model())
    path = tmp_path / "mae_visualize.pth"
    torch.save({"model": m.state_dict()}, path)  # the official layout: weights only, no config
    m2 = load_checkpoint(path)
    assert {k: m2.config[k] for k in OFFICIAL_STYLE} == OFFICIAL_STYLE
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        assert torch.equal(m2(x, noise=noise)[1], m(x, noise=noise)[1])
    assert load_checkpoint(path, norm_pix_loss=False).target == "pixel"


def test_official_encoder_only_checkpoint(tmp_path):
    m = perturbed(model())
    enc = {k: v for k, v in m.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": enc}, path)
    m2 = load_checkpoint(path)
    assert m2.loaded_from["encoder_only"] and m2.config["decoder_embed_dim"] == 512  # the official decoder
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m2.forward_features(x), m.forward_features(x))
        assert m2(x)[1].shape == (2, 16, 192)  # a fresh decoder still runs
    # DDP / torch.compile prefixes are stripped
    wrapped = {"module._orig_mod." + k: v for k, v in enc.items()}
    assert load_checkpoint({"model": wrapped}).loaded_from["encoder_only"]


def test_timm_export_loads_strictly_into_a_timm_vit():
    timm = pytest.importorskip("timm")
    m = perturbed(model())
    x = torch.randn(2, 3, 32, 32)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2, num_classes=0, qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    vit.load_state_dict(mae_to_timm_vit_state_dict(m.state_dict()), strict=True)
    with torch.no_grad():
        assert torch.allclose(vit.forward_features(x), m.forward_features(x), atol=1e-6)
    avg = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2, num_classes=0, global_pool="avg",
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    avg.load_state_dict(mae_to_timm_vit_state_dict(m.state_dict(), global_pool="avg"), strict=True)
    # the same shapes as timm's own vit_base_patch16_224
    with torch.device("meta"):  # shapes only
        base = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
        mb = create_model("mae_vit_base_patch16")
    exported = mae_to_timm_vit_state_dict(mb.state_dict())
    assert {k: tuple(v.shape) for k, v in exported.items()} == {k: tuple(v.shape) for k, v in base.state_dict().items()}


def test_timm_state_dict_loads_as_encoder(tmp_path):
    timm = pytest.importorskip("timm")
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2, num_classes=10,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    path = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), path)
    m = load_checkpoint(path)
    assert m.loaded_from == {"source": str(path), "format": "timm", "encoder_only": True}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m.forward_features(x), vit.forward_features(x), atol=1e-6)


def test_heads_and_inference_follow_the_official_table():
    assert [heads_for_width(w) for w in (768, 1024, 1280, 192, 384)] == [12, 16, 16, 3, 6]
    assert heads_for_width(512, decoder=True) == 16
    with torch.device("meta"):
        sd = create_model("mae_vit_large_patch16").state_dict()
    cfg = infer_config(sd)
    assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"], cfg["img_size"], cfg["patch_size"]) == (1024, 24, 16, 224, 16)
    assert (cfg["decoder_embed_dim"], cfg["decoder_depth"], cfg["decoder_num_heads"], cfg["mlp_ratio"]) == (512, 8, 16, 4.0)


def test_clear_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth.*not a readable"):
        load_checkpoint(garbage)
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)}, foreign)
    with pytest.raises(ValueError, match="resnet.pth.*not an MAE"):
        load_checkpoint(foreign)
    m = model()
    bad = tmp_path / "mismatch.pth"
    cfg = dict(m.config, embed_dim=64, num_heads=1)  # a config that contradicts the weights
    torch.save({"model": m.state_dict(), "model_config": cfg}, bad)
    with pytest.raises(ValueError, match="mismatch.pth.*shape mismatch"):
        load_checkpoint(bad)
    extra = tmp_path / "extra.pth"
    torch.save({"model": {**m.state_dict(), "surprise.weight": torch.zeros(1)}}, extra)
    with pytest.raises(ValueError, match="extra.pth.*unexpected keys"):
        load_checkpoint(extra)
