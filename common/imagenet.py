"""ImageNet per-channel statistics (RGB, 0..1 scale), the normalisation every MAE checkpoint expects."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
