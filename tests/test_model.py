"""The MAE model: masking, decoder order, loss, targets, official state-dict layout, presets."""
import json
import math

import pytest
import torch

from model import MaskedAutoencoderViT, create_model, list_models
from model.masking import block_mask, grid_mask, masks_from_scores, num_visible, random_mask, sample_mask

SAMPLER_FNS = {"random": random_mask, "block": block_mask, "grid": grid_mask}


def tiny(**kw):
    cfg = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
               decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4, norm_pix_loss=True)
    if "target" in kw:
        cfg.pop("norm_pix_loss")
    cfg.update(kw)
    torch.manual_seed(0)
    return MaskedAutoencoderViT(**cfg)


# ----------------------------------------------------------------------------- masking
@pytest.mark.parametrize("sampler", ["random", "block", "grid"])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_visible_count_is_exact_and_restore_inverts(sampler, ratio):
    grid, n = (8, 8), 6
    L = 64
    ids_keep, ids_restore, mask = sample_mask(sampler, n, grid, ratio, noise=torch.rand(n, L))
    K = int(L * (1 - ratio))
    assert ids_keep.shape == (n, K) and ids_restore.shape == (n, L) and mask.shape == (n, L)
    assert torch.all((mask == 0).sum(1) == K) and torch.all((mask == 1).sum(1) == L - K)
    # the kept ids are exactly the unmasked positions
    for i in range(n):
        assert set(ids_keep[i].tolist()) == set(torch.nonzero(mask[i] == 0).flatten().tolist())
    # ids_restore is a permutation that puts [kept..., masked...] back into patch order
    x = torch.arange(L).expand(n, L)
    shuffled = torch.cat([ids_keep, x.gather(1, torch.argsort(ids_restore, 1))[:, K:]], 1)
    assert torch.equal(shuffled.gather(1, ids_restore), x)
    assert torch.equal(torch.sort(ids_restore, 1).values, x)


def test_random_masking_is_the_official_recipe():
    """argsort(noise), keep the first K, mask = ones with zeros at the front, unshuffled."""
    n, L, D, ratio = 3, 49, 5, 0.75
    noise, x = torch.rand(n, L), torch.randn(n, L, D)
    K = int(L * (1 - ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :K]
    x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, D))
    mask = torch.ones(n, L)
    mask[:, :K] = 0
    mask = torch.gather(mask, 1, ids_restore)

    m = tiny(img_size=56)  # 7 x 7 = 49 patches
    got_x, got_mask, got_restore = m.random_masking(x, ratio, noise=noise)
    assert torch.equal(got_x, x_masked) and torch.equal(got_mask, mask) and torch.equal(got_restore, ids_restore)


@pytest.mark.parametrize("sampler", ["random", "block", "grid"])
def test_same_noise_same_mask(sampler):
    noise = torch.rand(4, 64)
    a = sample_mask(sampler, 4, (8, 8), 0.75, noise=noise)
    b = sample_mask(sampler, 4, (8, 8), 0.75, noise=noise.clone())
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    c = sample_mask(sampler, 4, (8, 8), 0.75, noise=torch.rand(4, 64))
    if sampler != "grid":  # the grid pattern is the same for any noise at 75%
        assert not torch.equal(a[2], c[2])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(sample_mask(sampler, 4, (8, 8), 0.75, generator=g1)[2],
                       sample_mask(sampler, 4, (8, 8), 0.75, generator=g2)[2])


def test_forward_same_noise_same_output_and_generator():
    m = tiny().eval()
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    l1, p1, k1 = m(x, noise=noise)
    l2, p2, k2 = m(x, noise=noise)
    assert torch.equal(l1, l2) and torch.equal(p1, p2) and torch.equal(k1, k2)
    r1 = m(x, generator=torch.Generator().manual_seed(7))
    r2 = m(x, generator=torch.Generator().manual_seed(7))
    assert torch.equal(r1[2], r2[2]) and torch.equal(r1[0], r2[0])


def test_grid_sampler_keeps_one_patch_per_2x2_cell():
    _, _, mask = grid_mask(3, (8, 8), 0.75, noise=torch.rand(3, 64))
    m = mask.view(3, 8, 8)
    assert torch.all(m[:, 0::2, 0::2] == 0) and m.sum() == 3 * 48
    # odd grid / other ratio: still exact, grid cells preferred
    _, _, mask = grid_mask(2, (7, 7), 0.8, noise=torch.rand(2, 49))
    assert torch.all((mask == 0).sum(1) == num_visible(49, 0.8))


def _masked_neighbour_share(mask, g):
    m = mask.view(-1, g, g).bool()
    nb = torch.zeros_like(m)
    nb[:, 1:] |= m[:, :-1]
    nb[:, :-1] |= m[:, 1:]
    nb[:, :, 1:] |= m[:, :, :-1]
    nb[:, :, :-1] |= m[:, :, 1:]
    return ((m & nb).sum() / m.sum()).item(), m


def test_block_sampler_masks_rectangles_not_salt_and_pepper():
    """At 40% masking, masked patches of a blockwise mask have more masked neighbours than random ones."""
    noise = torch.rand(64, 196)
    _, _, blk = block_mask(64, (14, 14), 0.4, noise=noise)
    _, _, rnd = random_mask(64, (14, 14), 0.4, noise=noise)
    share_blk, m = _masked_neighbour_share(blk, 14)
    share_rnd, _ = _masked_neighbour_share(rnd, 14)
    assert share_blk > share_rnd + 0.1, (share_blk, share_rnd)
    # runs of masked rows: rectangles give whole masked rows segments longer than random ones
    assert m.float().mean().item() == pytest.approx(1 - num_visible(196, 0.4) / 196)


def test_masks_from_scores_prefers_low_scores():
    scores = torch.tensor([[0.3, 0.1, 0.9, 0.5]])
    ids_keep, _, mask = masks_from_scores(scores, 2)
    assert ids_keep.tolist() == [[1, 0]] and mask.tolist() == [[0, 0, 1, 1]]


def test_bad_sampler_and_noise_shape():
    with pytest.raises(ValueError, match="sampler"):
        tiny(mask_sampler="checker")
    with pytest.raises(ValueError, match="noise"):
        tiny()(torch.randn(2, 3, 32, 32), noise=torch.rand(2, 5))


# ----------------------------------------------------------------------------- decoder and loss
def test_decoder_sees_tokens_in_original_patch_order():
    m = tiny().eval()
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    seen = {}
    m.decoder_blocks[0].register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0].detach()))
    latent, mask, ids_restore = m.forward_encoder(x, 0.75, noise=noise)
    m.forward_decoder(latent, ids_restore)
    emb = m.decoder_embed(latent)                      # (N, 1 + K, Dd): cls + visible in kept order
    ids_keep = torch.argsort(noise, 1)[:, :4]
    expected = m.mask_token.expand(2, 16, -1).clone()
    for i in range(2):
        for j, patch in enumerate(ids_keep[i].tolist()):
            expected[i, patch] = emb[i, 1 + j]          # visible token goes back to its own patch index
    expected = torch.cat([emb[:, :1], expected], 1) + m.decoder_pos_embed
    assert torch.allclose(seen["x"], expected, atol=1e-6)
    assert torch.equal(mask[:, ids_keep[0]][0], torch.zeros(4))


def test_visible_predictions_do_not_change_the_loss():
    m = tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    _, pred, mask = m(x, noise=torch.rand(2, 16))
    base = m.forward_loss(x, pred, mask)
    changed = pred + 5.0 * (1 - mask).unsqueeze(-1)
    assert torch.equal(m.forward_loss(x, changed, mask), base)
    assert not torch.allclose(m.forward_loss(x, pred + 5.0 * mask.unsqueeze(-1), mask), base)
    m.loss_on_all_patches = True
    assert not torch.allclose(m.forward_loss(x, changed, mask), m.forward_loss(x, pred, mask))


def test_norm_pix_target_has_zero_mean_unit_variance_per_patch():
    m = tiny()
    x = torch.rand(3, 3, 32, 32) * 4 + 2
    t = m.target_patches(x)
    assert t.shape == (3, 16, 8 * 8 * 3)
    assert torch.allclose(t.mean(-1), torch.zeros(3, 16), atol=1e-5)
    assert torch.allclose(t.var(-1), torch.ones(3, 16), atol=1e-3)
    assert torch.equal(tiny(target="pixel").target_patches(x), m.patchify(x))


def test_patchify_roundtrip_and_layout():
    m = tiny()
    x = torch.randn(2, 3, 32, 32)
    p = m.patchify(x)
    assert p.shape == (2, 16, 192) and torch.equal(m.unpatchify(p), x)
    # patch 5 = row 1, col 1; its flattening is (row, col, channel)
    assert torch.equal(p[0, 5].view(8, 8, 3), x[0, :, 8:16, 8:16].permute(1, 2, 0))


def test_target_alias():
    assert tiny(norm_pix_loss=False).target == "pixel"
    assert tiny(norm_pix_loss=True).config["target"] == "norm_pix"
    assert tiny(norm_pix_loss=None, target="pixel").norm_pix_loss is False
    with pytest.raises(ValueError, match="contradicts"):
        tiny(norm_pix_loss=True, target="pixel")


# ----------------------------------------------------------------------------- encoder variants
def test_mask_tokens_in_encoder_ablation():
    m = tiny(mask_token_in_encoder=True).eval()
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    latent, mask, _ = m.forward_encoder(x, 0.75, noise=noise)
    assert latent.shape == (2, 17, 64)
    loss, pred, mask2 = m(x, noise=noise)
    assert pred.shape == (2, 16, 192) and torch.isfinite(loss) and torch.equal(mask, mask2)
    assert set(m.state_dict()) - set(tiny().state_dict()) == {"encoder_mask_token"}
    # masked positions see the mask token, not the image: changing masked pixels changes nothing
    x2 = x.clone()
    xp = m.patchify(x2)
    xp[mask.bool()] = 3.0
    assert torch.allclose(m(m.unpatchify(xp), noise=noise)[1], pred, atol=1e-5)


def test_forward_features_and_encode():
    m = tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    f = m.forward_features(x)
    assert f.shape == (2, 17, 64)
    assert torch.allclose(m.encode(x, "cls"), f[:, 0]) and torch.allclose(m.encode(x, "avg"), f[:, 1:].mean(1))
    with pytest.raises(ValueError):
        m.encode(x, pool="max")
    # with nothing masked, the masked encoder equals forward_features up to token order
    latent, _, ids_restore = m.forward_encoder(x, 0.0, noise=torch.arange(16.).expand(2, 16))
    assert torch.allclose(latent, f, atol=1e-5)


# ----------------------------------------------------------------------------- parameters
def test_initialisation_is_official():
    m = tiny()
    assert not m.pos_embed.requires_grad and not m.decoder_pos_embed.requires_grad
    assert torch.all(m.pos_embed[0, 0] == 0)
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear):
            bound = math.sqrt(6 / (mod.in_features + mod.out_features))
            assert mod.weight.abs().max() <= bound and torch.all(mod.bias == 0), name
            assert mod.weight.abs().max() > 0.8 * bound, name
        if isinstance(mod, torch.nn.LayerNorm):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0) and mod.eps == 1e-6
    w = m.patch_embed.proj.weight
    assert w.abs().max() <= math.sqrt(6 / (w.shape[0] + w[0].numel()))
    big = create_model("mae_vit_pico_patch8_64")
    assert 0.015 < big.cls_token.std().item() < 0.025 and 0.01 < big.mask_token.std().item() < 0.03
    assert all(blk.attn.fused_attn for blk in big.blocks)


def _official_base_keys():
    """The official mae_vit_base_patch16 state dict, written out (order as in models_mae.py)."""
    keys = [("cls_token", (1, 1, 768)), ("pos_embed", (1, 197, 768)),
            ("mask_token", (1, 1, 512)), ("decoder_pos_embed", (1, 197, 512)),
            ("patch_embed.proj.weight", (768, 3, 16, 16)), ("patch_embed.proj.bias", (768,))]

    def block(prefix, d):
        return [(f"{prefix}.norm1.weight", (d,)), (f"{prefix}.norm1.bias", (d,)),
                (f"{prefix}.attn.qkv.weight", (3 * d, d)), (f"{prefix}.attn.qkv.bias", (3 * d,)),
                (f"{prefix}.attn.proj.weight", (d, d)), (f"{prefix}.attn.proj.bias", (d,)),
                (f"{prefix}.norm2.weight", (d,)), (f"{prefix}.norm2.bias", (d,)),
                (f"{prefix}.mlp.fc1.weight", (4 * d, d)), (f"{prefix}.mlp.fc1.bias", (4 * d,)),
                (f"{prefix}.mlp.fc2.weight", (d, 4 * d)), (f"{prefix}.mlp.fc2.bias", (d,))]

    for i in range(12):
        keys += block(f"blocks.{i}", 768)
    keys += [("norm.weight", (768,)), ("norm.bias", (768,)),
             ("decoder_embed.weight", (512, 768)), ("decoder_embed.bias", (512,))]
    for i in range(8):
        keys += block(f"decoder_blocks.{i}", 512)
    keys += [("decoder_norm.weight", (512,)), ("decoder_norm.bias", (512,)),
             ("decoder_pred.weight", (768, 512)), ("decoder_pred.bias", (768,))]
    return keys


def test_base_state_dict_equals_official_keys_and_shapes():
    with torch.device("meta"):  # shapes only: no memory, no init time
        m = create_model("mae_vit_base_patch16")
    got = [(k, tuple(v.shape)) for k, v in m.state_dict().items()]
    assert got == _official_base_keys()
    assert sum(p.numel() for p in m.parameters()) == 111_907_840  # as the official model (pos tables included)


# ----------------------------------------------------------------------------- registry
def test_registry_presets():
    names = list_models()
    for n in ["mae_vit_tiny_patch16", "mae_vit_small_patch16", "mae_vit_base_patch16", "mae_vit_large_patch16",
              "mae_vit_huge_patch14", "mae_vit_micro_patch8_64", "mae_vit_micro_patch4_32",
              "mae_vit_pico_patch8_64", "mae_vit_nano_patch8_64", "mae_vit_mini_patch8_64", "mae_vit_small_patch8_64"]:
        assert n in names
    from model.registry import model_config
    assert {k: model_config("mae_vit_large_patch16")[k] for k in ("embed_dim", "depth", "num_heads")} == \
        dict(embed_dim=1024, depth=24, num_heads=16)
    h = model_config("mae_vit_huge_patch14")
    assert (h["embed_dim"], h["depth"], h["num_heads"], h["patch_size"]) == (1280, 32, 16, 14)
    assert (h["decoder_embed_dim"], h["decoder_depth"], h["decoder_num_heads"]) == (512, 8, 16)
    micro = create_model("mae_vit_micro_patch8_64")
    assert micro.num_patches == 64 and micro.norm_pix_loss and micro.model_name == "mae_vit_micro_patch8_64"
    assert (micro.embed_dim, len(micro.blocks), micro.blocks[0].attn.num_heads) == (192, 6, 3)
    assert (micro.decoder_embed.out_features, len(micro.decoder_blocks)) == (128, 2)
    small = create_model("mae_vit_micro_patch8_64", img_size=32, norm_pix_loss=False, mask_sampler="grid")
    assert small.num_patches == 16 and small.target == "pixel" and small.mask_sampler == "grid"
    assert create_model("mae_vit_micro_patch4_32").num_patches == 64
    assert create_model("mae_vit_pico_patch8_64", target="pixel").target == "pixel"
    with pytest.raises(KeyError, match="known models"):
        create_model("mae_vit_gigantic")


def test_config_is_json_and_rebuilds_the_model():
    m = create_model("mae_vit_pico_patch8_64", img_size=32, mask_ratio=0.6, loss_on_all_patches=True)
    cfg = json.loads(json.dumps(m.config))
    m2 = MaskedAutoencoderViT(**cfg)
    assert m2.config == m.config and m2.mask_ratio == 0.6
    assert [k for k in m2.state_dict()] == [k for k in m.state_dict()]


# ----------------------------------------------------------------------------- speed paths are exact
def test_visible_only_patch_embedding_equals_embed_then_gather():
    m = tiny()
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    ids_keep = torch.argsort(noise, 1)[:, :4]
    full = m.patch_embed(x) + m.pos_embed[:, 1:]
    expected = torch.gather(full, 1, ids_keep.unsqueeze(-1).expand(-1, -1, 64))
    assert torch.allclose(m.embed_visible(x, ids_keep), expected, atol=1e-5)
    with pytest.raises(ValueError, match="input size"):
        m.embed_visible(torch.randn(1, 3, 40, 40), ids_keep[:1])


def test_lean_attention_matches_timm_attention():
    from timm.layers import Attention
    from model.blocks import FusedQKVAttention
    torch.manual_seed(0)
    ref = Attention(64, 4, qkv_bias=True)
    lean = FusedQKVAttention(64, 4, qkv_bias=True)
    lean.load_state_dict(ref.state_dict())
    x1 = torch.randn(3, 9, 64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = ref(x1), lean(x2)
    assert torch.allclose(y1, y2, atol=1e-6)
    y1.square().sum().backward()
    y2.square().sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-5)
    assert torch.allclose(ref.qkv.weight.grad, lean.qkv.weight.grad, atol=1e-5)


# ----------------------------------------------------------------------------- options under DDP, mask ratio
OPTIONS = {  # every model option the trainer exposes, as constructor keywords
    "default": {}, "mask_token_in_encoder": {"mask_token_in_encoder": True}, "pixel": {"target": "pixel"},
    "block": {"mask_sampler": "block"}, "grid": {"mask_sampler": "grid"},
    "loss_on_all_patches": {"loss_on_all_patches": True},
    "ratio_0_all_patches": {"loss_on_all_patches": True, "mask_ratio": 0.0}, "ratio_0.9": {"mask_ratio": 0.9},
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_trainable_parameter_gets_a_gradient(option):
    """DDP (without find_unused_parameters) needs every trainable parameter in the loss's graph; the
    mask-token ablation used to leave the decoder's mask_token out and died at DDP's second step."""
    m = tiny(**OPTIONS[option]).train()
    loss = m(torch.randn(2, 3, 32, 32), noise=torch.rand(2, 16))[0]
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing and torch.isfinite(loss)
    assert m.unused_parameters() == ([] if option != "mask_token_in_encoder" else ["mask_token"])


def test_mask_token_ablation_keeps_the_official_state_dict_keys():
    """The ablation's unused decoder mask_token stays in the state dict (frozen), so ablation
    checkpoints written before and after this fix load into each other and keep official key names."""
    m = tiny(mask_token_in_encoder=True)
    assert "mask_token" in m.state_dict() and not m.mask_token.requires_grad
    assert m.encoder_mask_token.requires_grad
    m.load_state_dict(tiny(mask_token_in_encoder=True).state_dict())


def test_mask_ratio_zero_keeps_the_decoder_in_patch_order():
    """Nothing masked (a plain autoencoder, loss on all patches): the decoder must still unshuffle the
    encoder's tokens. It used to skip that when the sequence was full length, so predictions depended
    on the masking noise's order."""
    m = tiny(loss_on_all_patches=True, mask_ratio=0.0).eval()
    x = torch.randn(2, 3, 32, 32)
    ordered = m.forward_decoder(m.forward_features(x), torch.arange(16).expand(2, 16))
    loss1, pred1, mask1 = m(x, noise=torch.rand(2, 16))
    _, pred2, _ = m(x, noise=torch.rand(2, 16))
    assert torch.all(mask1 == 0)
    torch.testing.assert_close(pred1, ordered, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pred2, ordered, atol=1e-5, rtol=1e-5)


def test_mask_ratio_outside_the_open_interval_is_refused():
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="mask_ratio"):
            tiny(mask_ratio=bad)
    m = tiny()
    with pytest.raises(ValueError, match="mask_ratio"):
        m(torch.randn(1, 3, 32, 32), mask_ratio=0.0)
    with pytest.raises(ValueError, match="mask_ratio"):
        tiny(loss_on_all_patches=True, mask_ratio=1.0)
    tiny(loss_on_all_patches=True, mask_ratio=0.0)  # a plain autoencoder: defined


def test_loss_never_divides_by_an_empty_mask():
    m = tiny()
    x = torch.randn(2, 3, 32, 32)
    _, pred, mask = m(x, noise=torch.rand(2, 16))
    loss = m.forward_loss(x, pred, torch.zeros_like(mask))
    assert torch.isfinite(loss) and loss.item() == 0.0


def test_block_mask_of_a_sample_depends_only_on_its_own_noise():
    """Under DDP a rank masks its rows of the global noise; the single process masks all rows. Block
    masks used to be seeded from the whole batch's noise, so the same sample got another mask."""
    noise = torch.rand(8, 64)
    full = block_mask(8, (8, 8), 0.75, noise=noise)
    for part, rows in ((block_mask(4, (8, 8), 0.75, noise=noise[1::2]), slice(1, None, 2)),
                       (block_mask(1, (8, 8), 0.75, noise=noise[5:6]), slice(5, 6))):
        for got, want in zip(part, full):
            assert torch.equal(got, want[rows])


def test_config_refuses_mask_ratio_zero_unless_loss_on_all_patches(capsys):
    from trainer.config import ConfigError, load_config
    from trainer.pretrain import main
    for bad in ("0", "0.0", "1.0"):
        with pytest.raises(ConfigError, match="model.mask_ratio"):
            load_config(None, [f"model.mask_ratio={bad}"])
    assert main(["--print-config", "model.mask_ratio=0"]) == 2
    assert "model.mask_ratio" in capsys.readouterr().err
    cfg = load_config(None, ["model.mask_ratio=0", "model.loss_on_all_patches=true"])
    assert cfg.model.mask_ratio == 0.0
    with pytest.raises(ConfigError, match="model.mask_ratio"):
        load_config(None, ["model.mask_ratio=1.0", "model.loss_on_all_patches=true"])
