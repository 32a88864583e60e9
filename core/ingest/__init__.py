"""One ingestion path for synthetic drops and bring-your-own data (CSV or Parquet).

Why one path: if the synthetic source had its own reader, the pipeline would be
tested on data a real user never sends. Instead both go through the same steps:
``read_tables`` -> a *mapping* from contract columns to the user's column names ->
``ingest_catalog`` / ``ingest_interactions``, which return rows conforming to
``core.schemas`` plus a quarantine frame (RAW_QUARANTINE_SCHEMA) with a reason code,
a human detail and the raw row as JSON. Bad input never fails the batch.

Everything is vectorized polars (no per-row Python on the happy path); JSON payloads
and details are only built for the quarantined rows.

Modules, one concern each (this package's public API is what ``__all__`` lists here):

* ``reasons``: the reason-code tables (rendered by core.reason_docs) and the limits behind them;
* ``mappings``: contract column -> user column, from JSON settings;
* ``encodings``: codec settings, and showing undecodable text;
* ``reading`` / ``csv_records``: files -> a frame of values plus the records that cannot be read;
* ``values``: shared column expressions, value screening and the quarantine shape;
* ``catalog`` / ``timestamps`` / ``interactions``: normalization of each source;
* ``day_index``: one file holding many days is split once into a per-day index, so each day's
  run reads only its own rows.
"""

from core.ingest.catalog import ingest_catalog
from core.ingest.day_index import InteractionLoad, ingest_interaction_files
from core.ingest.encodings import (
    ENCODING_SETTINGS,
    decode_error_detail,
    escape_surrogates,
    first_surrogate,
    has_surrogates,
    text_encoding,
)
from core.ingest.interactions import ingest_interactions
from core.ingest.mappings import (
    CatalogMapping,
    InteractionMapping,
    absent_optional_columns,
    catalog_mapping_from_json,
    interaction_mapping_from_json,
    mapping_from_json,
)
from core.ingest.reading import SUPPORTED_SUFFIXES, read_tables, read_tables_with_rejects, trimmed_header
from core.ingest.reasons import (
    CATALOG_REASONS,
    FORMAT_TAGS,
    INTERACTION_REASONS,
    KIND_SPELLINGS,
    NO_GENRE_MARKERS,
    RATING_RANGE,
    READ_REASONS,
    REPAIRED_REASONS,
    TS_RANGE,
    YEAR_RANGE,
)
from core.ingest.timestamps import parse_timestamps

__all__ = [
    "CATALOG_REASONS",
    "ENCODING_SETTINGS",
    "FORMAT_TAGS",
    "INTERACTION_REASONS",
    "KIND_SPELLINGS",
    "NO_GENRE_MARKERS",
    "RATING_RANGE",
    "READ_REASONS",
    "REPAIRED_REASONS",
    "SUPPORTED_SUFFIXES",
    "TS_RANGE",
    "YEAR_RANGE",
    "CatalogMapping",
    "InteractionLoad",
    "InteractionMapping",
    "absent_optional_columns",
    "catalog_mapping_from_json",
    "decode_error_detail",
    "escape_surrogates",
    "first_surrogate",
    "has_surrogates",
    "ingest_catalog",
    "ingest_interaction_files",
    "ingest_interactions",
    "interaction_mapping_from_json",
    "mapping_from_json",
    "parse_timestamps",
    "read_tables",
    "read_tables_with_rejects",
    "text_encoding",
    "trimmed_header",
]
