"""One measured side per process: `python -m benchmarks.worker <command> ...` prints one JSON line.

Commands
- prep-ours / prep-trl: data preparation of the same conversations (benchmark 1).
- train-ours / train-trl: training throughput on the same tokens (benchmark 2).
- peak: the matmul FLOP/s peak of this machine (MFU denominator).
- gemm: FLOP/s of one matmul shape against that peak.
- scale: the data half (curation + tokenization) over many daily partitions (benchmark 3).
- dpo-ours / dpo-trl: preference training on the same pairs, one reference mode (or LoRA) each (benchmark 6);
  dpo-trl-tokenize: TRL's own tokenization of the same pairs' text, compared with ours.

``our_side`` and ``trl_side`` are the two sides, ``models`` the model a training run
measures, ``steps`` the summary of a training run, ``scale`` benchmark 3, ``cli`` the
command line; ``dpo_ours`` and ``dpo_trl`` the two sides of benchmark 6. Only benchmarks/ imports trl (in
``trl_side`` and ``dpo_trl``); the platform never does.
"""

from benchmarks.worker.cli import main
from benchmarks.worker.models import flop_parameters
from benchmarks.worker.our_side import prep_ours, train_ours
from benchmarks.worker.scale import scale
from benchmarks.worker.steps import summarize_steps
from benchmarks.worker.trl_side import prep_trl, train_trl

__all__ = [
    "flop_parameters",
    "main",
    "prep_ours",
    "prep_trl",
    "scale",
    "summarize_steps",
    "train_ours",
    "train_trl",
]
