"""Every model option trains under DDP: 2 gloo processes match 1 process with the same global batch.

Also the two arms of the mask-token ablation get the same optimiser treatment for their mask tokens.
"""
from __future__ import annotations

import pytest
import torch

from model import create_model
from trainer.optim import param_groups

PICO = dict(img_size=32, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
            decoder_num_heads=2)


def _group_of(model, groups) -> dict[str, float]:
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    return {n: wd.get(id(p)) for n, p in model.named_parameters()}


@pytest.mark.parametrize("decay_tokens", [False, True])
def test_both_ablation_arms_treat_their_mask_token_alike(decay_tokens):
    """encoder_mask_token used to be decayed while mask_token was not (TOKEN_NAMES missed it)."""
    arms = {}
    for in_encoder in (False, True):
        m = create_model("mae_vit_pico_patch8_64", mask_token_in_encoder=in_encoder, **PICO)
        arms[in_encoder] = _group_of(m, param_groups(m, 0.05, decay_tokens=decay_tokens))
    want = 0.05 if decay_tokens else 0.0
    assert arms[False]["mask_token"] == want and arms[True]["encoder_mask_token"] == want
    assert arms[True]["cls_token"] == arms[False]["cls_token"] == want
    assert arms[True]["mask_token"] is None  # frozen in the ablation (unused): not optimised at all
