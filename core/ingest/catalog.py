"""Catalog normalization: one row per title, conforming to CATALOG_SCHEMA, plus its quarantine.

ids/text are stripped (blank = null; integral float ids print without ".0" so they match interaction ids);
a trailing "(YYYY)" is cut from titles and fills ``year`` when the year column is absent, null or bad;
"Matrix, The" -> "The Matrix", also before alternate titles and inside them ("Postman, The (Postino, Il)"
-> "The Postman (Il Postino)"); genres are split on the mapping's delimiter, deduplicated, "(no genres
listed)" and format tags such as "IMAX" dropped.
"""

from __future__ import annotations

import polars as pl

from core.ingest.mappings import CatalogMapping, _column
from core.ingest.reasons import FORMAT_TAGS, KIND_SPELLINGS, NO_GENRE_MARKERS, YEAR_RANGE
from core.ingest.values import _P, _number, _quarantine, _screen_values, _show, _text
from core.schemas import CATALOG_SCHEMA, RAW_QUARANTINE_SCHEMA, conform

_TITLE_YEAR = r"^(.*\S)\s*\((\d{4})\)$"
# Articles MovieLens-style catalogs move to the end ("Misérables, Les"). Case-sensitive on purpose: a
# lower-case "the" after a comma is part of the title ("Cry, the Beloved Country"). "L'" joins the
# next word without a space, so it has patterns of its own.
_ARTICLES = "The|A|An|Les|La|Le|Il|Lo|Gli|Der|Die|Das|Den|Det|El|Los|Las|Un|Une|Una|Ein|Eine|O"
_ALTERNATES = r"((?: \([^()]*\))*)"  # the alternate titles that may follow: " (Buono, il brutto, il cattivo, Il)"
# (pattern, replacement) applied in order: alternate titles first (an optional "a.k.a. " prefix stays in
# front), then the main title, whose article may stand before the alternates.
_ARTICLE_MOVES = (
    (rf"\((a\.k\.a\. )?([^()]*?), ({_ARTICLES})\)", "(${1}${3} ${2})"),
    (r"\((a\.k\.a\. )?([^()]*?), (L')\)", "(${1}${3}${2})"),
    (rf"^([^()]*?), ({_ARTICLES}){_ALTERNATES}$", "${2} ${1}${3}"),
    (rf"^([^()]*?), (L'){_ALTERNATES}$", "${2}${1}${3}"),
)


def _year_expr(name: str, dtype: pl.DataType) -> tuple[pl.Expr, pl.Expr]:
    """(valid year or null, raw text) of the year column."""
    lo, hi = YEAR_RANGE
    if dtype.is_temporal() and dtype != pl.Time and not isinstance(dtype, pl.Duration):
        num = pl.col(name).dt.year().cast(pl.Float64)
        raw = pl.col(name).cast(pl.String)
    else:
        num, raw = _number(name, dtype)
    ok = num.is_not_null() & num.is_finite() & (num == num.floor()) & (num >= lo) & (num <= hi)
    return pl.when(ok).then(num.cast(pl.Int32)), raw


def _front_articles(title: pl.Expr) -> pl.Expr:
    """Move trailing articles to the front of a title and of each alternate title in parentheses.

    Answers name titles the way people say them: "The Good, the Bad and the Ugly (Il Buono, il brutto,
    il cattivo)", not the sort form "Good, the Bad and the Ugly, The (Buono, il brutto, il cattivo, Il)".
    The moved word keeps its case (restoring the language's own capitalisation is out of reach).
    """
    for pattern, replacement in _ARTICLE_MOVES:
        title = title.str.replace_all(pattern, replacement)
    return title


def _genre_tags(parts: pl.Expr) -> pl.Expr:
    """Genres of a list of raw tags: stripped, deduplicated, without blanks, "no genres" markers or format tags.

    Markers and format tags are matched case-insensitively ("imax" is as little a genre as "IMAX").
    """
    dropped = [t.lower() for t in (*NO_GENRE_MARKERS, *FORMAT_TAGS)]
    tag = pl.element().str.strip_chars()
    keep = (tag.str.len_chars() > 0) & ~tag.str.to_lowercase().is_in(dropped)
    return (
        parts.list.eval(tag.filter(keep))
        .list.unique(maintain_order=True)
        .fill_null(pl.lit([], dtype=pl.List(pl.String)))
    )


def ingest_catalog(
    df: pl.DataFrame, mapping: CatalogMapping | None = None, *, read_rejects: pl.DataFrame | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Validate and normalize a catalog snapshot.

    Returns ``(rows, quarantine)``: rows conform to CATALOG_SCHEMA (input order, one per
    title_id), quarantine to RAW_QUARANTINE_SCHEMA with source="catalog", day=null.
    ``read_rejects`` (from ``read_tables_with_rejects``) lead the quarantine.
    Invariant: ``len(rows) + rejected == len(df) + len(read_rejects)`` where rejected counts
    quarantine rows whose reason is not in REPAIRED_REASONS.
    """
    mapping = mapping or CatalogMapping()
    raw_columns = list(df.columns)
    c_id = _column(df, mapping, "title_id", required=True)
    c_title = _column(df, mapping, "title", required=True)
    assert c_id is not None and c_title is not None
    c_kind, c_genres, c_year, c_syn, c_lang, c_mat = (
        _column(df, mapping, f, required=False) for f in ("kind", "genres", "year", "synopsis", "language", "maturity")
    )
    mapped = [c for c in (c_id, c_title, c_kind, c_genres, c_year, c_syn, c_lang, c_mat) if c is not None]
    df = _screen_values(df, mapped, list_column=c_genres)
    schema = df.schema
    null_text = pl.lit(None, dtype=pl.String)
    lo, hi = YEAR_RANGE

    title_raw = _text(c_title, schema[c_title])
    title_year = title_raw.str.extract(_TITLE_YEAR, 2).cast(pl.Int32, strict=False)
    has_title_year = title_year.is_between(lo, hi)
    title = pl.when(has_title_year).then(title_raw.str.extract(_TITLE_YEAR, 1)).otherwise(title_raw)
    title = _front_articles(title)
    if c_year is not None:
        year_col, year_raw = _year_expr(c_year, schema[c_year])
    else:
        year_col, year_raw = pl.lit(None, dtype=pl.Int32), null_text
    if c_kind is not None:
        kind_raw = _text(c_kind, schema[c_kind])
        kind = kind_raw.str.to_lowercase().replace_strict(KIND_SPELLINGS, default=None, return_dtype=pl.String)
    else:
        kind_raw, kind = null_text, null_text
    if c_genres is None:
        genres = pl.lit([], dtype=pl.List(pl.String))
    else:
        gdt = schema[c_genres]
        parts = (
            pl.col(c_genres).cast(pl.List(pl.String))
            if isinstance(gdt, pl.List)
            else _text(c_genres, gdt).str.split(mapping.genres_delimiter)
        )
        genres = _genre_tags(parts)

    def opt_text(name: str | None) -> pl.Expr:
        return null_text if name is None else _text(name, schema[name])

    norm = df.with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias(f"{_P}row"),
        _text(c_id, schema[c_id]).alias(f"{_P}id"),
        title.alias(f"{_P}title"),
        kind_raw.alias(f"{_P}kind_raw"),
        pl.when(kind_raw.is_null()).then(pl.lit("movie")).otherwise(kind).alias(f"{_P}kind"),
        genres.alias(f"{_P}genres"),
        year_raw.alias(f"{_P}year_raw"),
        year_col.alias(f"{_P}year_col"),
        pl.when(has_title_year).then(title_year).alias(f"{_P}title_year"),
        opt_text(c_syn).alias(f"{_P}synopsis"),
        opt_text(c_lang).alias(f"{_P}language"),
        opt_text(c_mat).alias(f"{_P}maturity"),
    )
    col = pl.col
    reason = (
        pl.when(col(f"{_P}pre_reason").is_not_null())
        .then(col(f"{_P}pre_reason"))
        .when(col(f"{_P}id").is_null())
        .then(pl.lit("null_title_id"))
        .when(col(f"{_P}title").is_null())
        .then(pl.lit("null_title"))
        .when(col(f"{_P}kind").is_null())
        .then(pl.lit("bad_kind"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    norm = norm.with_columns(reason.alias(f"{_P}reason"))
    rejected = norm.filter(col(f"{_P}reason").is_not_null()).with_columns(
        pl.when(col(f"{_P}pre_reason").is_not_null())
        .then(col(f"{_P}pre_detail"))
        .when(col(f"{_P}reason") == "null_title_id")
        .then(pl.lit(f"title_id is missing or blank (column {c_id!r}); the row cannot be keyed"))
        .when(col(f"{_P}reason") == "null_title")
        .then(pl.lit(f"title is missing or blank (column {c_title!r})"))
        .otherwise(
            pl.concat_str(
                [
                    pl.lit("kind "),
                    _show(col(f"{_P}kind_raw")),
                    pl.lit(f" (column {c_kind!r}) is not one of {sorted(KIND_SPELLINGS)}"),
                ]
            )
        )
        .alias(f"{_P}detail")
    )
    valid = norm.filter(col(f"{_P}reason").is_null())
    first = col(f"{_P}id").is_first_distinct()
    first_rows = valid.group_by(f"{_P}id").agg(col(f"{_P}row").min().alias(f"{_P}first"))
    dups = (
        valid.filter(~first)
        .join(first_rows, on=f"{_P}id", how="left", maintain_order="left")
        .with_columns(
            pl.lit("duplicate_title_id").alias(f"{_P}reason"),
            pl.concat_str(
                [
                    pl.lit("title_id "),
                    _show(col(f"{_P}id")),
                    pl.lit(" repeats input row "),
                    col(f"{_P}first").cast(pl.String),
                    pl.lit(" (0-based); kept the first, dropped this one"),
                ]
            ).alias(f"{_P}detail"),
        )
    )
    kept = valid.filter(first).with_columns(
        pl.coalesce(col(f"{_P}year_col"), col(f"{_P}title_year")).alias(f"{_P}year")
    )
    bad_year = kept.filter(col(f"{_P}year_raw").is_not_null() & col(f"{_P}year_col").is_null()).with_columns(
        pl.lit("bad_year").alias(f"{_P}reason"),
        pl.concat_str(
            [
                pl.lit("year "),
                _show(col(f"{_P}year_raw")),
                pl.lit(f" (column {c_year!r}) is not a whole year in {lo}..{hi}; kept the title with year="),
                col(f"{_P}year").cast(pl.String).fill_null("null"),
                pl.when(col(f"{_P}year").is_not_null()).then(pl.lit(" (from the title)")).otherwise(pl.lit("")),
            ]
        ).alias(f"{_P}detail"),
    )
    flagged = pl.concat(
        [f.select(f"{_P}row", f"{_P}reason", f"{_P}detail", *raw_columns) for f in (rejected, dups, bad_year)],
        how="vertical_relaxed",
    ).sort(f"{_P}row")
    quarantine = _quarantine(flagged, "catalog", pl.lit(None, dtype=pl.Date), raw_columns)
    if read_rejects is not None and read_rejects.height:
        read = conform(read_rejects.with_columns(pl.lit("catalog").alias("source")), RAW_QUARANTINE_SCHEMA)
        quarantine = pl.concat([read, quarantine])
    rows = conform(
        kept.select(
            col(f"{_P}id").alias("title_id"),
            col(f"{_P}title").alias("title"),
            col(f"{_P}kind").alias("kind"),
            col(f"{_P}genres").alias("genres"),
            col(f"{_P}year").alias("year"),
            col(f"{_P}synopsis").alias("synopsis"),
            col(f"{_P}language").alias("language"),
            col(f"{_P}maturity").alias("maturity"),
        ),
        CATALOG_SCHEMA,
    )
    return rows, quarantine
