"""Limits that keep the inspector responsive and safe; a module of constants so that `--help`
and the app share them without importing torch."""

DEFAULT_MAX_PARAMS = 150_000_000      # live masking: ViT-B MAE (112M with decoder) is fine on CPU; L/H are not
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000       # ~ 8000 x 5000: larger uploads are refused before decoding
REFRESH_SECONDS = 10                  # timer period while a run is training
