"""The catalog indexed by the day's popularity, with the text fields answers are grounded in."""

from __future__ import annotations

import polars as pl

from core.conversation_builder.config import BuilderConfig
from core.schemas import CATALOG_SCHEMA, conform
from core.signals import WATCH_EVENTS

_STOPWORDS = (
    "the", "and", "for", "with", "from", "that", "this", "into", "your", "you", "are", "was",
    "not", "but", "all", "our", "his", "her", "its", "who", "what", "when", "how", "one", "out",
)  # fmt: skip


class Catalog:
    """The catalog indexed by popularity rank: row i is the i-th most played title of
    the day (ties by title_id), so lists of ranks sort into popularity order."""

    def __init__(self, catalog: pl.DataFrame, inter: pl.DataFrame, cfg: BuilderConfig) -> None:
        cat = conform(catalog, CATALOG_SCHEMA)
        cat = cat.filter(pl.col("title_id").is_not_null() & (pl.col("title").str.strip_chars() != ""))
        cat = cat.unique("title_id", keep="first", maintain_order=True)
        pop = inter.filter(pl.col("event").is_in(WATCH_EVENTS)).group_by("title_id").len("pop")
        cat = cat.join(pop, on="title_id", how="left").with_columns(pl.col("pop").fill_null(0))
        cat = cat.sort(["pop", "title_id"], descending=[True, False]).with_row_index("rank")
        cat = cat.with_columns(pl.col("rank").cast(pl.Int64))
        title = pl.col("title").str.replace_all(r"\s+", " ").str.strip_chars()
        syn = pl.col("synopsis").str.replace_all(r"\s+", " ").str.strip_chars()
        cut = syn.str.slice(0, cfg.max_synopsis_chars - 1).str.replace(r"\s+\S*$", "")
        kind = pl.col("kind").str.strip_chars().str.to_lowercase()
        genres = pl.col("genres").list.eval(pl.element().str.strip_chars()).list.drop_nulls()
        genres = genres.list.eval(pl.element().filter(pl.element() != "")).list.unique(maintain_order=True)
        words = (
            title.str.to_lowercase()
            .str.extract_all(r"\p{L}{3,}")
            .list.eval(pl.element().filter(~pl.element().is_in(list(_STOPWORDS))))
            .list.unique(maintain_order=True)
        )
        cat = cat.with_columns(
            title.alias("title"),
            genres.fill_null([]).alias("genres"),
            kind.alias("kind"),
            pl.when(kind.is_in(["movie", "series"])).then(kind).otherwise(pl.lit("title")).alias("kind_word"),
            pl.when(kind == "movie")
            .then(pl.lit("movies"))
            .when(kind == "series")
            .then(pl.lit("series"))
            .otherwise(pl.lit("titles"))
            .alias("kind_plural"),
            pl.when(syn == "")
            .then(None)
            .when(syn.str.len_chars() > cfg.max_synopsis_chars)
            .then(cut + pl.lit("…"))
            .otherwise(syn)
            .alias("synopsis"),
            words.fill_null([]).alias("words"),
            (pl.col("year") // 10 * 10).alias("decade"),
        ).with_columns(
            pl.when(pl.col("year").is_null())
            .then(pl.col("title"))
            .otherwise(pl.format("{} ({})", pl.col("title"), pl.col("year")))
            .alias("display"),
            pl.col("genres").list.join(", ").alias("genres_text"),
        )
        self.df = cat
        self.rank_of = cat.select("title_id", "rank")
        self._ranks = cat.get_column("rank")
        self._display = cat.get_column("display")

    def display(self, ranks: pl.Expr) -> pl.Expr:
        """Display names of a list[int] rank column."""
        return ranks.list.eval(
            pl.element().replace_strict(self._ranks, self._display, default=None, return_dtype=pl.String)
        )

    def attrs(self, prefix: str) -> pl.DataFrame:
        """Per-rank attributes, columns prefixed, for joining onto rows by a rank column."""
        cols = ["rank", "title_id", "title", "display", "kind_word", "kind_plural", "genres", "genres_text"]
        cols += ["synopsis"]
        cols += ["year", "decade", "words"]
        return self.df.select([pl.col(c).alias(f"{prefix}{c}") for c in cols])

    def top_by(self, keys: list[str], k: int, explode: str | None = None) -> pl.DataFrame:
        """For each combination of ``keys``, the ``k`` most popular ranks."""
        df = self.df.explode(explode) if explode else self.df
        return (
            df.filter(pl.all_horizontal([pl.col(c).is_not_null() for c in keys]))
            .group_by(keys)
            .agg(pl.col("rank").sort().head(k).alias("top"))
        )
