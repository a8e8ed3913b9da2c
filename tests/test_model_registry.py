"""model.kwargs_from_config / param_counts / encoder_param_count: the one home of "a run's config ->
the model it trained" and of the paper's model size, checked against every copy still in the callers
(trainer.pretrain.model_kwargs, evals.sweep's _param_counts). When a caller switches to model.* (issue 13
phase 3), drop its comparison here. The inspector switched (inspector.app.run_encoder_params calls
model.encoder_param_count); what is left is a check that it shows the same number."""
import pytest
import torch

import common.imagenet
import model
from experiments import results
from inspector import app
from model import create_model, encoder_param_count, kwargs_from_config, param_counts
from trainer.config import from_dict
from trainer.pretrain import model_kwargs as trainer_model_kwargs

# (model section, data section) of trainer configs: the defaults, extra constructor keywords, an
# explicit target (which replaces norm_pix_loss), the ablations, another image size and patch size
CONFIGS = [
    ({}, {}),
    ({"norm_pix_loss": False, "decoder_depth": 1, "decoder_embed_dim": 64}, {}),
    ({"target": "pca", "pca_dims": 12}, {}),
    ({"target": "norm_pix", "norm_pix_loss": True, "mask_ratio": 0.9}, {}),
    ({"name": "mae_vit_micro_patch4_32", "mask_token_in_encoder": True, "mask_sampler": "block"},
     {"image_size": 32}),
    ({"name": "mae_vit_pico_patch8_64", "loss_on_all_patches": True, "mask_ratio": 0.5,
      "target": "pixel"}, {"image_size": 48}),
]


def _stored(model_section, data_section) -> dict:
    """The config dict a run stores (config.yaml): the trainer's resolved config, `extra` flattened."""
    return from_dict({"model": model_section, "data": data_section}).to_dict()


@pytest.mark.parametrize("sections", CONFIGS)
def test_kwargs_equal_every_copy(sections):
    stored = _stored(*sections)
    kw = kwargs_from_config(stored)
    assert kw == trainer_model_kwargs(from_dict(stored))
    built = create_model(stored["model"]["name"], **kw)
    assert built.config["img_size"] == stored["data"]["image_size"]
    assert built.mask_ratio == stored["model"]["mask_ratio"]


@pytest.mark.parametrize("sections", CONFIGS)
def test_counts_equal_every_copy(sections):
    stored = _stored(*sections)
    enc, tot = param_counts(stored)
    assert (enc / 1e6, tot / 1e6) == results._param_counts(stored)
    assert enc == encoder_param_count(stored) == encoder_param_count(create_model(stored["model"]["name"],
                                                                                 **kwargs_from_config(stored)))
    assert 0 < enc < tot
    # the inspector's runs table shows the same number (its old copy also counted the frozen sin-cos
    # pos_embed: micro 2,719,296 instead of 2,706,816 trainable)
    assert app.run_encoder_params(stored) == enc


def test_presets_match_the_published_table():
    # registry docstring: micro 2.71M encoder / 3.15M total, base 85.6M / 111.7M
    enc, tot = param_counts(create_model("mae_vit_micro_patch8_64"))
    assert (round(enc / 1e6, 2), round(tot / 1e6, 2)) == (2.71, 3.15)
    enc, tot = param_counts({"model": {"name": "mae_vit_base_patch16"}})   # meta device: no memory
    assert (round(enc / 1e6, 1), round(tot / 1e6, 1)) == (85.6, 111.7)


def test_nested_extra_and_missing_sections():
    # an `extra` section (a dict written by hand, or an older layout) is merged; target beats norm_pix_loss
    cfg = {"model": {"name": "mae_vit_pico_patch8_64", "norm_pix_loss": True,
                     "extra": {"target": "pixel", "decoder_depth": 2}}, "data": {"image_size": 32}}
    assert kwargs_from_config(cfg) == {"target": "pixel", "decoder_depth": 2, "img_size": 32}
    assert kwargs_from_config({}) == {}
    assert kwargs_from_config({"model": None, "data": None}) == {}
    # an explicit img_size in the model section wins, as in trainer.pretrain.model_kwargs
    assert kwargs_from_config({"model": {"img_size": 16}, "data": {"image_size": 32}}) == {"img_size": 16}


@pytest.mark.parametrize("cfg, key", [({"model": "mae_vit_base_patch16"}, "model"),
                                      ({"model": {}, "data": [64]}, "data"),
                                      ({"model": {"extra": 3}}, "model.extra")])
def test_a_section_that_is_not_a_mapping_is_named(cfg, key):
    with pytest.raises(ValueError, match=f"config key '{key}' must be a section"):
        kwargs_from_config(cfg)


def test_counting_a_config_without_a_model_name_says_so():
    with pytest.raises(KeyError, match="model.name"):
        param_counts({"model": {"depth": 2}})
    with pytest.raises(KeyError, match="unknown model"):
        param_counts({"model": {"name": "mae_vit_nonexistent"}})


def test_forward_with_another_sampler_leaves_the_model_alone():
    torch.manual_seed(0)
    m = create_model("mae_vit_pico_patch8_64").eval()
    block = create_model("mae_vit_pico_patch8_64", mask_sampler="block").eval()
    block.load_state_dict(m.state_dict())
    imgs = torch.randn(2, 3, 64, 64)
    noise = torch.rand(2, m.num_patches)
    with torch.no_grad():
        loss, pred, mask = m(imgs, noise=noise, sampler="block")
        ref_loss, ref_pred, ref_mask = block(imgs, noise=noise)
        plain_mask = m(imgs, noise=noise)[2]
    assert m.mask_sampler == "random"
    assert torch.equal(mask, ref_mask) and torch.equal(pred, ref_pred) and loss == ref_loss
    assert not torch.equal(mask, plain_mask)   # block masks differ from random ones at this noise
    with pytest.raises(ValueError, match="unknown mask sampler"):
        m(imgs, noise=noise, sampler="checkerboard")


def test_imagenet_statistics_have_one_home():
    assert model.IMAGENET_MEAN is common.imagenet.IMAGENET_MEAN
    assert model.IMAGENET_STD is common.imagenet.IMAGENET_STD
    assert model.IMAGENET_MEAN == (0.485, 0.456, 0.406) and model.IMAGENET_STD == (0.229, 0.224, 0.225)
