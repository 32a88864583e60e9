"""Dagster resources: one per external system (warehouse, artifact store, launchers)."""
