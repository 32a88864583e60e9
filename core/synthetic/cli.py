"""`python -m core.synthetic drop --landing DIR [--day D | --days N]`: write synthetic landing drops.

The world's seed, size and first day default to the platform settings (SYNTHETIC_SEED, SYNTHETIC_TITLES,
SYNTHETIC_MEMBERS, PLATFORM_PARTITION_START), read when the command runs, so a drop written here is the drop
the assets would generate on demand; the flags override them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path

from core.settings import load_synthetic_settings
from core.synthetic.config import SyntheticConfig
from core.synthetic.drops import ensure_drop, next_day


def _parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--day {text!r} is not a date; use YYYY-MM-DD") from exc


def _parser(defaults: SyntheticConfig) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core.synthetic", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    drop = sub.add_parser("drop", help="write the catalog (if missing) and one or more daily drops")
    drop.add_argument("--landing", type=Path, required=True, help="landing root directory")
    which = drop.add_mutually_exclusive_group()
    which.add_argument("--day", type=_parse_day, help="drop exactly this day (YYYY-MM-DD)")
    which.add_argument("--days", type=int, help="drop N days after the newest existing one")
    drop.add_argument("--seed", type=int, default=defaults.seed, help="default: SYNTHETIC_SEED")
    drop.add_argument("--n-titles", type=int, default=defaults.n_titles, help="default: SYNTHETIC_TITLES")
    drop.add_argument("--n-members", type=int, default=defaults.n_members, help="default: SYNTHETIC_MEMBERS")
    drop.add_argument(
        "--start-day", type=_parse_day, default=defaults.start_day, help="default: PLATFORM_PARTITION_START"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.synthetic drop --landing DIR [--day D | --days N]``: drop new days."""
    try:
        defaults = SyntheticConfig.from_settings(load_synthetic_settings())
    except ValueError as exc:  # a malformed SYNTHETIC_* variable: name it, no traceback
        argparse.ArgumentParser(prog="python -m core.synthetic").error(str(exc))
    parser = _parser(defaults)
    args = parser.parse_args(argv)
    if args.days is not None and args.days < 1:
        parser.error(f"--days must be >= 1, got {args.days}")
    cfg = SyntheticConfig(
        seed=args.seed, n_titles=args.n_titles, n_members=args.n_members, start_day=args.start_day, days=defaults.days
    )
    if args.day is not None:
        days = [args.day]
    else:
        first = next_day(args.landing, cfg)
        days = [first + timedelta(days=i) for i in range(args.days or 1)]
    for day in days:
        written = ensure_drop(args.landing, cfg, day)
        for path in written:
            print(f"wrote {path}")
        if not written:
            print(f"day {day.isoformat()} already present under {args.landing}; nothing written")
    return 0
