"""`python -m core.synthetic drop ...`: the command line lives in `core.synthetic.cli` (importable and testable
without running it as a script)."""

import sys

from core.synthetic.cli import main

sys.exit(main())
