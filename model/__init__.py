"""The MAE model: encoder, masking samplers, decoder, loss, named presets and checkpoint I/O.

See docs/INTERFACES.md for the contract. ``model`` reads files only in ``model.checkpoint``.
"""
from .checkpoint import (UnsafeCheckpointError, hf_config_kwargs, hf_to_mae_state_dict, load_checkpoint,
                         mae_to_hf_state_dict, mae_to_timm_vit_state_dict, safe_torch_load, save_model_state)
from .mae import MaskedAutoencoderViT
from .masking import SAMPLERS, sample_mask
from .registry import create_model, list_models, model_config
from .visualize import reconstruction_panels

# ImageNet statistics, the same values as pipeline.IMAGENET_MEAN / IMAGENET_STD.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MaskedAutoencoder = MaskedAutoencoderViT  # the name DESIGN.md uses

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "MaskedAutoencoder", "MaskedAutoencoderViT", "SAMPLERS",
    "create_model", "hf_config_kwargs", "hf_to_mae_state_dict", "list_models", "load_checkpoint",
    "mae_to_hf_state_dict", "mae_to_timm_vit_state_dict", "model_config", "reconstruction_panels",
    "safe_torch_load", "sample_mask", "save_model_state", "UnsafeCheckpointError",
]
