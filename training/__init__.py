"""Code that runs inside trainer processes and pods (torch/transformers, never dagster).

Entry points: `python -m training.sft --config F [--resume]` (alone or under torchrun) and, in
each trainer pod on Kubernetes, `python -m training.k8s_node --wait-for HOST -- torchrun ...`.
Modules: config (TrainConfig), data (verified shard loading + best-fit-decreasing
packing), loss (global-batch token mean), distributed (DDP/FSDP2), checkpoint
(atomic, verifiable, resumable), reporting (Dagster Pipes or stdout, rank 0 only),
sft (the training loop), k8s_node (the pod's entry point and its exit codes), torchrun_logs
(reading torchrun's failure reports).
"""
