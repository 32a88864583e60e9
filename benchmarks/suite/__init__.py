"""The six benchmarks. Each returns (payload for JSON, Markdown section).

1. data preparation: our tokenized_shards path vs TRL SFTTrainer's dataset preparation;
2. training throughput on CPU: ours packed vs TRL padded vs TRL packed (bfd, padding-free, sdpa);
3. scale: curation + tokenization of many generated conversations, partition by partition;
4. multi-process: `torchrun` 2 processes vs 1 process on the same training work;
5. the warehouse: the data half with the warehouse in the loop, DuckDB file vs DuckLake, 1/2/4 day writers;
6. preference training (DPO) on CPU: training.dpo vs TRL DPOTrainer, reference precomputed and on the fly.

One module per benchmark (``data_prep``, ``training``, ``scale``, ``multiprocess``, ``warehouse``, ``dpo``), with
benchmark 2's FLOPs accounting in ``mfu`` and its Markdown in ``training_report``;
``sizes`` holds the full/quick sizes and ``summary`` the headline table.
"""

from benchmarks.harness import fmt
from benchmarks.suite.data_prep import bench_data_prep
from benchmarks.suite.dpo import bench_dpo
from benchmarks.suite.mfu import WIDTH_SWEEP, model_flops_per_second, run_mfu
from benchmarks.suite.multiprocess import bench_multiprocess
from benchmarks.suite.scale import bench_scale
from benchmarks.suite.sizes import Sizes
from benchmarks.suite.summary import summary_rows
from benchmarks.suite.training import bench_training
from benchmarks.suite.training_report import profile_shares, training_markdown
from benchmarks.suite.warehouse import bench_warehouse

__all__ = [
    "WIDTH_SWEEP",
    "Sizes",
    "bench_data_prep",
    "bench_dpo",
    "bench_multiprocess",
    "bench_scale",
    "bench_training",
    "bench_warehouse",
    "fmt",
    "model_flops_per_second",
    "profile_shares",
    "run_mfu",
    "summary_rows",
    "training_markdown",
]
