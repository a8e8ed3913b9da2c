"""Evaluation of MAE encoders: what did pretraining teach?

Modules (each one job):
  features          extract_features: frozen encoder -> pooled features (no grad, bf16 on CUDA, DDP gather)
  knn               weighted kNN (k=20, T=0.07) + `python -m evals.knn`
  linprobe          BatchNorm + linear head with LARS (timm's Lars), full protocol or on cached features + CLI
  finetune          timm ViT fine-tuning with layer-wise lr decay (timm's param groups), mixup/cutmix,
                    RandAugment + CLI
  online            epoch_evals: the trainer's per-epoch kNN + cached probe on a fixed subset
  common            checkpoint / data / schedule / DDP / run-store plumbing shared by the CLIs
  inputs            the CLIs' input checks and error contract (one line; exit 2, 3 for a diverged run)
  imagenette_table  the proof on real photographs (pretrained vs random init vs pixels)
  layers            kNN + cached probe on every encoder block (and at random init) + CLI

Ablation and scaling sweeps and their report live in `experiments/`.
"""
