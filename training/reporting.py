"""Progress and results: Dagster Pipes when launched by Dagster, stdout otherwise; rank 0 only.

The only module that touches `dagster_pipes` (never `dagster`), so the trainer runs
the same with or without an orchestrator. Other ranks get a silent reporter.
"""

from __future__ import annotations

import sys
from typing import Any


def _pipes_requested() -> bool:
    from dagster_pipes import PipesEnvVarParamsLoader

    return PipesEnvVarParamsLoader().is_dagster_pipes_process()


class Reporter:
    """Rank 0: print lines to stdout and, under Dagster, stream them as Pipes logs/messages."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.pipes: Any = None
        if enabled and _pipes_requested():
            from dagster_pipes import open_dagster_pipes

            self.pipes = open_dagster_pipes()

    def info(self, line: str) -> None:
        if not self.enabled:
            return
        print(line, file=sys.stdout, flush=True)
        if self.pipes is not None:
            self.pipes.log.info(line)

    def progress(self, metrics: dict[str, Any]) -> None:
        """One training-progress record: a readable line plus a structured Pipes custom message."""
        if not self.enabled:
            return
        self.info(
            f"step {metrics['step']}/{metrics['max_steps']} loss {metrics['loss']:.4f} lr {metrics['lr']:.3e} "
            f"grad_norm {metrics['grad_norm']:.3f} tokens/s {metrics['tokens_per_second']:.0f}"
        )
        if self.pipes is not None:
            self.pipes.report_custom_message({"kind": "progress", **metrics})

    def final(self, summary: dict[str, Any], metadata: dict[str, Any], data_version: str | None) -> None:
        """Report the trained checkpoint: an asset materialization when an asset is in scope."""
        if not self.enabled:
            return
        self.info(
            f"done: {summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
            f"{summary['tokens_per_second']:.0f} tokens/s, packing efficiency {summary['packing_efficiency']:.3f}"
        )
        if self.pipes is None:
            return
        from dagster_pipes import DagsterPipesError

        try:
            has_asset = bool(self.pipes.asset_keys)
        except DagsterPipesError:  # launched from an op, not an asset
            has_asset = False
        if has_asset:
            self.pipes.report_asset_materialization(metadata=metadata, data_version=data_version)
        else:  # still hand the numbers back
            self.pipes.report_custom_message({"kind": "summary", "metadata": metadata})

    def close(self, exc: BaseException | None = None) -> None:
        if self.pipes is None:
            return
        # PipesContext's context-manager exit sends "closed" with the exception, if any.
        if exc is not None:
            self.pipes.__exit__(type(exc), exc, exc.__traceback__)
        else:
            self.pipes.__exit__(None, None, None)
        self.pipes = None
