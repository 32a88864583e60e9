"""Prepare DAGSTER_HOME for the embedded default: `python -m dagster_project.instance`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

INSTANCE_TEMPLATE = Path(__file__).with_name("instance_config.yaml")


def ensure_dagster_home() -> Path:
    """Create DAGSTER_HOME (default PLATFORM_HOME/dagster) with our dagster.yaml unless one exists."""
    from dagster_project.settings import load_settings

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(load_settings().dagster_home)))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        shutil.copyfile(INSTANCE_TEMPLATE, config)
    return home


if __name__ == "__main__":
    print(ensure_dagster_home())
