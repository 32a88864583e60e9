"""The reason codes of raw ingestion and the limits behind them.

Each table maps a code to its one-line meaning and lives here, next to the limits the checks use, so a
new code cannot ship without its meaning (core.reason_docs renders the tables into docs/reason-codes.md).

Catalog reason codes (CATALOG_REASONS):
    null_title_id, null_title      id/title missing or blank -> row rejected
    bad_kind                       kind not a known movie/series spelling -> row rejected
                                   (a null kind defaults to "movie")
    duplicate_title_id             a later row repeats an accepted id -> rejected, first kept
    bad_year                       year unparsable or outside 1870..2100 -> the row is KEPT with
                                   year=null (or the year parsed from "Title (1995)") and the
                                   issue is recorded in the quarantine frame. This is the only
                                   "repaired" reason (REPAIRED_REASONS): a title without a year
                                   is still worth recommending.

Interaction reason codes (INTERACTION_REASONS, checked in this order, first wins):
    null_member_id, null_title_id, bad_timestamp, wrong_day, unknown_title, bad_event, bad_value

Reason codes of records that cannot be read as values at all (READ_REASONS), either source;
one such record never fails the file:
    encoding_error                 CSV: bytes that do not decode with the source's encoding (detail:
                                   file:line and the bytes); Parquet: a binary value that is not UTF-8
    ragged_row                     CSV: more fields than the header (file:line)
    malformed_row                  CSV: quoting the csv module cannot parse (file:line)
    bad_type                       Parquet: a list/struct/duration where a value is expected
"""

from __future__ import annotations

from datetime import UTC, datetime

# Reason codes -> one-line meaning (rendered into docs/reason-codes.md by core.reason_docs).
CATALOG_REASONS: dict[str, str] = {
    "null_title_id": "the title id is missing or blank; the row is rejected",
    "null_title": "the title is missing or blank; the row is rejected",
    "bad_kind": "kind is not a known spelling of movie or series (a missing kind means movie); the row is rejected",
    "duplicate_title_id": "a later row repeats an id already accepted; the first row wins, this one is rejected",
    "bad_year": "the year cannot be parsed or is outside 1870..2100; a repair, not a reject: the row is kept "
    "with the year from 'Title (1995)' or null, and the problem is recorded",
}
REPAIRED_REASONS = frozenset({"bad_year"})  # recorded in quarantine, but the row is kept
INTERACTION_REASONS: dict[str, str] = {  # checked in this order, the first that applies wins
    "null_member_id": "the member id is missing or blank",
    "null_title_id": "the title id is missing or blank",
    "bad_timestamp": "the timestamp is missing, or is not epoch seconds or an ISO 8601 time between 1900 and 2100",
    "wrong_day": "a row in a per-day file whose timestamp falls on another day",
    "unknown_title": "the title id is not in raw.catalog",
    "bad_event": "the event is not one of play, complete, rate, search",
    "bad_value": "the value does not fit the event: a rating outside 0.5..5, or a completion fraction outside 0..1",
}
READ_REASONS: dict[str, str] = {  # records that cannot be read as values at all, either source
    "encoding_error": "CSV: bytes that do not decode with the source's encoding (the detail gives file:line "
    "and the bytes); Parquet: a binary value that is not UTF-8",
    "ragged_row": "CSV: a line with more fields than the header (file:line)",
    "malformed_row": "CSV: quoting that cannot be parsed (file:line); reading resumes on the next line",
    "bad_type": "Parquet: a list, struct or duration where one value is expected",
}
YEAR_RANGE = (1870, 2100)
RATING_RANGE = (0.5, 5.0)  # MovieLens uses half stars; the synthetic source uses 1..5
TS_RANGE = (datetime(1900, 1, 1, tzinfo=UTC), datetime(2101, 1, 1, tzinfo=UTC))
KIND_SPELLINGS = {
    "movie": "movie",
    "film": "movie",
    "feature": "movie",
    "series": "series",
    "show": "series",
    "tv": "series",
    "tv series": "series",
    "tv show": "series",
    "tvseries": "series",
    "miniseries": "series",
}
NO_GENRE_MARKERS = ("(no genres listed)",)  # MovieLens' spelling of "no genres"
# Tags a source lists among the genres that describe a release format, not what a title is about:
# MovieLens puts "IMAX" in its genres field. Dropped at ingestion (case-insensitively, like the
# markers above) so no answer or search query calls a title "an IMAX movie".
FORMAT_TAGS = ("IMAX",)
