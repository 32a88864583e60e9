"""Helpers shared by the test groups (importable as `support.*`: pytest puts tests/ on sys.path)."""
