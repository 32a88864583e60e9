"""`python -m benchmarks.worker <command> ...`: one measured side per process."""

import sys

from benchmarks.worker.cli import main

sys.exit(main())
