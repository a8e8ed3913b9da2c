"""The trainer's learning-rate schedule: ``common.schedule`` (shared with the eval CLIs, which must
not import the trainer), under the names ``trainer.pretrain`` and ``trainer.resume`` import."""
from common.schedule import lr_at, set_lr

__all__ = ["lr_at", "set_lr"]
