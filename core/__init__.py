"""Pure, Dagster-free logic of the platform: data generation, ingestion, curation,
chat rendering and loss masking, shard manifests, and the deployment settings read from
the environment (core.settings).

Everything here is plain Python + polars/tokenizers/transformers so that unit tests
call it directly and the trainer image can import it without Dagster.
"""
