"""Code that runs inside trainer processes and pods (torch/transformers, never dagster).

Entry point: `python -m training.sft --config F [--resume]` (alone or under torchrun).
Modules: config (TrainConfig), data (verified shard loading + best-fit-decreasing
packing), loss (global-batch token mean), distributed (DDP/FSDP2), checkpoint
(atomic, verifiable, resumable), reporting (Dagster Pipes or stdout, rank 0 only),
sft (the training loop).
"""
