"""Benchmark sizes (full or quick) and the met/MISSED verdict of a target."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between `make bench` and `BENCH_QUICK=1 make bench`."""

    quick: bool
    repeats: int = 3
    prep_conversations: int = 20_000
    train_steps: int = 24
    train_rows: int = 8
    seq_len: int = 512
    scale_small: int = 100_000
    scale_large: int = 1_000_000
    scale_per_day: int = 50_000
    multi_steps: int = 20
    # torch intra-op threads per training process (CPU). One: on a shared machine OpenMP threads
    # that wait on each other turn other users' load into large swings; one thread per side keeps
    # the comparison about the code. Benchmark 4 compares 1 process x 2 threads with 2 x 1.
    train_threads: int = 1
    # Benchmark 6, preference training (DPO): demo pairs (~91% train), optimizer steps, our packed rows x length.
    dpo_pairs: int = 160
    dpo_steps: int = 8
    dpo_rows: int = 4
    dpo_seq_len: int = 512

    @classmethod
    def for_mode(cls, quick: bool) -> Sizes:
        if quick:
            return cls(
                quick=True,
                prep_conversations=5_000,
                train_steps=6,
                train_rows=4,
                scale_small=20_000,
                scale_large=60_000,
                scale_per_day=20_000,
                multi_steps=8,
                dpo_pairs=120,
                dpo_steps=4,
            )
        return cls(quick=False)


def status(target: float, value: float, higher_is_better: bool = True) -> str:
    """ "met" or "MISSED", the verdict the tables and RESULTS.md show beside each target."""
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "MISSED"
