"""Evaluation of MAE encoders: what did pretraining teach?

Modules (each one job):
  features          extract_features: frozen encoder -> pooled features (no grad, bf16 on CUDA, DDP gather)
  knn               weighted kNN (k=20, T=0.07) + `python -m evals.knn`
  linprobe          BatchNorm + linear head with LARS, full protocol or on cached features + CLI
  finetune          timm ViT fine-tuning with layer-wise lr decay, mixup/cutmix, RandAugment + CLI
  online            epoch_evals: the trainer's per-epoch kNN + cached probe on a fixed subset
  lars, lr_decay    the optimiser and the param groups the above use
  common            checkpoint / data / schedule / DDP / run-store plumbing shared by the CLIs
  imagenette_table  the proof on real photographs (pretrained vs random init vs pixels)
  sweep, report, sweep_store, trends, paper_refs   ablation and scaling sweeps (see their docs)
"""
