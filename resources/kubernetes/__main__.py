"""`python -m resources.kubernetes render ...` (see resources.kubernetes.cli)."""

import os
import sys

from resources.kubernetes.cli import main

if __name__ == "__main__":
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    sys.exit(main())
