"""The Dagster code location of the post-training platform."""
