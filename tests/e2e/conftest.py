"""The session-wide `dagster dev` platform that the end-to-end and browser tests share (started once)."""

from support.dagster_dev_platform import dev_platform

__all__ = ["dev_platform"]
