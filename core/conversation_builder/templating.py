"""Expression building blocks shared by the three kinds: per-row choices, templates, message lists, ids.

Per-row choices of templates come from a sha256 of the row's key (``seed`` included),
never from global RNG state, so the same inputs give the same rows in the same order.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from core.conversation_builder.config import BuilderConfig
from core.curation import stable_hash_hex, stable_hash_u64
from core.schemas import MESSAGES_DTYPE


def bits(h: pl.Expr, shift: int, n: int | pl.Expr) -> pl.Expr:
    """An independent-ish choice in [0, n) from the 64-bit row hash."""
    n_u = n.cast(pl.UInt64) if isinstance(n, pl.Expr) else pl.lit(n, dtype=pl.UInt64)
    return ((h // pl.lit(1 << shift, dtype=pl.UInt64)) % n_u).cast(pl.Int64)


def pick(idx: pl.Expr, options: list[pl.Expr | str]) -> pl.Expr:
    """options[idx] as an expression (templates chosen per row)."""
    exprs = [pl.lit(o) if isinstance(o, str) else o for o in options]
    out = exprs[-1]
    for i in range(len(exprs) - 2, -1, -1):
        out = pl.when(idx == i).then(exprs[i]).otherwise(out)
    return out


def fmt(template: str, **fields: pl.Expr) -> pl.Expr:
    """``str.format``-like templating over expressions: "{a} and {b}"."""
    parts: list[pl.Expr] = []
    rest = template
    while "{" in rest:
        pre, _, after = rest.partition("{")
        name, _, rest = after.partition("}")
        if pre:
            parts.append(pl.lit(pre))
        parts.append(fields[name])
    if rest:
        parts.append(pl.lit(rest))
    return pl.concat_str(parts)


# "an" before a vowel sound, judged from the first letters of the next word. Cheap exceptions: a silent h
# ("an hour"), a "yoo"/"w" sound ("a unique", "a European", "a one-off") and numbers said with a vowel
# ("an 8", "an 11", "an 1890s"). Not handled: initialisms read letter by letter ("an FBI", "a URL").
_AN = r"^(?:[aeiou]|h(?:our|onest|onou?r|eir)|8|1[18](?:\d\d)?(?:\D|$))"
_A_BEFORE_VOWEL = r"^(?:uni[^nm]|us[eu]|ut[ei]|ur[aeiou]|eu|ewe|one\b|once\b)"


def indefinite(phrase: pl.Expr) -> pl.Expr:
    """``phrase`` after "a" or "an", whichever its first word takes: genres start with any letter
    ("an Adventure, Romance movie", "a Drama movie")."""
    head = phrase.str.strip_chars_start().str.to_lowercase()
    an = head.str.contains(_AN) & ~head.str.contains(_A_BEFORE_VOWEL)
    return pl.concat_str([pl.when(an).then(pl.lit("an ")).otherwise(pl.lit("a ")), phrase])


def assemble(
    df: pl.DataFrame,
    exchanges: list[tuple[pl.Expr, pl.Expr]],
    n_ex: pl.Expr,
    with_system: pl.Expr,
    system_prompt: str,
) -> pl.Series:
    """[system?, user1, assistant1, ...] cut to ``n_ex`` exchanges, one list per row.

    An exchange whose answer (or question) is null is left out after the cut: an answer is null
    when the catalog holds nothing to say (no synopsis, genres, year or kind), and a turn that
    only says "the catalog has no X" teaches nothing. The cut comes first, so a row never gains
    an exchange it was not meant to have.

    Built as one flat column of turns (row-major, by a gather), reshaped to a fixed
    width and sliced per row: ``concat_list`` of struct columns is an order of
    magnitude slower at a million rows.
    """
    contents = [pl.lit(system_prompt)]
    roles = ["system"]
    for user, assistant in exchanges:
        contents += [user, assistant]
        roles += ["user", "assistant"]
    n, k = df.height, len(contents)
    if n == 0:
        return pl.Series("messages", [], dtype=MESSAGES_DTYPE)
    cols = df.select(
        *[c.cast(pl.String).alias(f"_c{i}") for i, c in enumerate(contents)],
        pl.when(with_system).then(0).otherwise(1).cast(pl.Int64).alias("_off"),
        (with_system.cast(pl.Int64) + 2 * n_ex).alias("_len"),
    )
    # A question without its answer (or the reverse) goes too: both turns null, so the filter drops the pair.
    pairs = [(f"_c{i}", f"_c{i + 1}") for i in range(1, k, 2)]
    cols = cols.with_columns(
        pl.when(pl.col(user).is_not_null() & pl.col(answer).is_not_null()).then(pl.col(name)).alias(name)
        for user, answer in pairs
        for name in (user, answer)
    )
    flat = pl.concat(
        [
            cols.select(pl.struct(pl.lit(r).alias("role"), pl.col(f"_c{i}").alias("content"))).to_series()
            for i, r in enumerate(roles)
        ]
    )
    row_major = (np.arange(k, dtype=np.int64) * n)[None, :] + np.arange(n, dtype=np.int64)[:, None]
    grid = flat.gather(row_major.ravel()).reshape((n, k)).cast(MESSAGES_DTYPE)
    messages = pl.col("messages").list.slice(pl.col("_off"), pl.col("_len"))
    if any(cols.get_column(f"_c{i}").has_nulls() for i in range(k)):  # skip the filter when nothing is left out
        messages = messages.list.eval(pl.element().filter(pl.element().struct.field("content").is_not_null()))
    return cols.select("_off", "_len").with_columns(grid.alias("messages")).select(messages).to_series()


def numbered(names: pl.Expr) -> pl.Expr:
    """list[str] -> "1. A\\n2. B" (the format evaluators parse titles from)."""
    return names.list.eval(
        pl.concat_str([(pl.int_range(pl.len()) + 1).cast(pl.String), pl.lit(". "), pl.element()])
    ).list.join("\n")


def system_flag(h: pl.Expr, cfg: BuilderConfig) -> pl.Expr:
    """Three in four conversations carry the system turn (none when the prompt is empty)."""
    if not cfg.system_prompt.strip():
        return pl.lit(False)
    return bits(h, 40, 4) != 0


def conversation_ids(df: pl.DataFrame, key: pl.Expr) -> pl.Series:
    """Ids hashed from what decides a row's content, so the same content always gets the same id."""
    return stable_hash_hex(df.select(key.alias("conversation_id")).to_series(), 32)


def row_hashes(df: pl.DataFrame, key: pl.Expr) -> pl.Series:
    """``_h``: the 64-bit hash of a row's key that every per-row choice (``bits``) is drawn from."""
    return stable_hash_u64(df.select(key.alias("_h")).to_series())
