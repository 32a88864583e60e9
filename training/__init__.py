"""Code that runs inside trainer processes and pods (torch/transformers, never dagster).

The SFT entry point (`python -m training.sft`) lands with the training issue.
"""
