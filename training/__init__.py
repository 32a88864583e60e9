"""Code that runs inside trainer processes and pods (torch/transformers, never dagster).

Entry points: `python -m training.sft --config F [--resume]` (alone or under torchrun) and, in
each trainer pod on Kubernetes, `python -m training.k8s_node --wait-for HOST -- torchrun ...`.
Modules: sft (the recipe: setup -> train -> finish), config (TrainConfig), data (verified shard
loading + best-fit-decreasing packing), attention (packed_sdpa), loss (global-batch token mean),
distributed (DDP/FSDP2), state (the loop's progress), checkpoint (atomic, verifiable, resumable),
export (the final HF model dir), metrics (throughput, MFU), flops (matmul probes), summary
(summary.json and its Pipes metadata), reporting (Dagster Pipes or stdout, rank 0 only),
k8s_node (the pod's entry point and its exit codes), torchrun_logs (reading torchrun's failure
reports). The cpu package holds what makes a CPU step fast: C kernels, torch.compile, malloc.
"""
