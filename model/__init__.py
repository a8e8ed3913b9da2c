"""The MAE model: encoder, masking samplers, decoder, loss, named presets and checkpoint I/O.

See docs/INTERFACES.md for the contract. ``model`` reads files only in ``model.checkpoint``.
"""
from common.imagenet import IMAGENET_MEAN, IMAGENET_STD  # re-exported: model.IMAGENET_MEAN / STD

from .checkpoint import (UnsafeCheckpointError, hf_config_kwargs, hf_to_mae_state_dict, load_checkpoint,
                         mae_to_hf_state_dict, mae_to_timm_vit_state_dict, safe_torch_load, save_model_state)
from .mae import MaskedAutoencoderViT
from .masking import SAMPLERS, sample_mask
from .registry import (create_model, encoder_param_count, kwargs_from_config, list_models, model_config,
                       param_counts)
from .visualize import reconstruction_panels

MaskedAutoencoder = MaskedAutoencoderViT  # the name DESIGN.md uses

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "MaskedAutoencoder", "MaskedAutoencoderViT", "SAMPLERS",
    "create_model", "encoder_param_count", "hf_config_kwargs", "hf_to_mae_state_dict", "kwargs_from_config",
    "list_models", "load_checkpoint", "mae_to_hf_state_dict", "mae_to_timm_vit_state_dict", "model_config",
    "param_counts", "reconstruction_panels", "safe_torch_load", "sample_mask", "save_model_state",
    "UnsafeCheckpointError",
]
