"""Held-out evaluation of a checkpoint: masked loss by split and kind, recommendation hit@k.

Two families of numbers, both computed from data the checkpoint never trained on:

- **Loss.** Cross-entropy over loss-mask tokens only, with exactly the training
  definition (token t is predicted from tokens < t and counts where
  ``loss_mask[t] == 1``), summed in float64 per conversation so callers can
  aggregate by split and by conversation kind without a mean of means.
- **Recommendation hit@k.** For held-out ``recommendation`` conversations the first
  assistant turn lists titles, the first being what the member actually watched next
  (core/conversation_builder.py). The prompt (everything before that turn) is encoded
  with the checkpoint's own tokenizer through the platform's serving encoder
  (``core.masking.encode_prompt``), the model answers greedily, and the titles it names
  are matched back to the catalog. A popularity baseline answers the same cases.

Imports torch/transformers and ``core``, never ``dagster``: the eval asset calls these
functions, and so can a notebook or a training pod.
"""

from __future__ import annotations

import bisect
import math
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from core.conversation_builder import WATCH_EVENTS
from core.masking import MaskError, encode_conversation, encode_prompt
from core.shards import read_split, read_verified_manifest

HELDOUT_SPLITS = ("validation", "test")

# Why a row or case was left out of a metric; every skip is returned with a detail.
EVAL_SKIP_REASONS: dict[str, str] = {
    "null_row": "input_ids or loss_mask is null",
    "length_mismatch": "input_ids and loss_mask have different lengths",
    "token_out_of_vocab": "a token id is negative or not below the model's vocabulary size: the shards were "
    "tokenized for another model",
    "no_assistant_turn": "the recommendation conversation has no assistant turn, so there is no target",
    "no_target_title": "the first assistant turn names no title that matches the catalog",
    "prompt_error": "the chat template could not render the prompt (core.masking.MaskError)",
    "prompt_too_long": "the prompt plus max_new_tokens exceeds the model's max_position_embeddings",
}


@dataclass(frozen=True)
class Skipped:
    """One input left out of a metric, with a reason code from EVAL_SKIP_REASONS."""

    key: str  # conversation_id (or row index when there is none)
    reason: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"conversation_id": self.key, "reason": self.reason, "detail": self.detail}


def _count_reasons(skipped: Iterable[Skipped]) -> dict[str, int]:
    return dict(sorted(Counter(s.reason for s in skipped).items()))


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def load_for_eval(
    model_dir: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer) from a Hugging Face model directory, in eval mode on ``device``.

    fp32 on CPU (bf16 matmuls are slow there); bf16 on a GPU unless ``dtype`` says otherwise.
    """
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} is not a Hugging Face model directory (no config.json); pass a trained_checkpoint "
            "or base_model version directory"
        )
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return model.to(device).eval(), tokenizer


# ======================================================================================
# Masked loss


@dataclass
class LossTotals:
    """Loss sums of a set of rows; per-row arrays are aligned with the input rows.

    Skipped rows have 0 in both per-row arrays and an entry in ``skipped``.
    """

    loss_sum: float
    loss_tokens: int
    row_loss_sum: np.ndarray  # float64
    row_loss_tokens: np.ndarray  # int64
    skipped: list[Skipped] = field(default_factory=list)
    skipped_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    tokens: int = 0  # real (non-pad) tokens run through the model
    padded_tokens: int = 0  # batch cells computed, pads included
    seconds: float = 0.0

    @property
    def mean_loss(self) -> float | None:
        return self.loss_sum / self.loss_tokens if self.loss_tokens else None


def _list_column(rows: pl.DataFrame, name: str, dtype: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat values, offsets, is_null) of a list column, without a Python object per token."""
    if name not in rows.columns:
        raise ValueError(f"rows need a {name!r} column (shard rows: conversation_id, input_ids, loss_mask)")
    arr = rows.get_column(name).rechunk().to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    is_null = arr.is_null().to_numpy(zero_copy_only=False)
    lengths = arr.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(dtype)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return flat, offsets, is_null


def _row_counts(flags: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per row, how many ``flags[starts[i]:ends[i]]`` are true (vectorized)."""
    cumulative = np.zeros(len(flags) + 1, dtype=np.int64)
    np.cumsum(flags, out=cumulative[1:])
    return cumulative[ends] - cumulative[starts]


def _length_batches(lengths: np.ndarray, order: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Rows (longest first) grouped so rows x longest length stays within batch_tokens."""
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = int(lengths[order[start]])
        size = max(1, batch_tokens // max(longest, 1))
        batches.append(order[start : start + size])
        start += size
    return batches


@torch.no_grad()
def masked_loss(
    model: torch.nn.Module,
    rows: pl.DataFrame,
    *,
    batch_tokens: int = 4096,
    device: str | torch.device | None = None,
    vocab_size: int | None = None,
) -> LossTotals:
    """Held-out cross-entropy over loss-mask tokens, exactly as training defines it.

    ``rows`` has ``input_ids`` and ``loss_mask`` list columns (``conversation_id``
    optional, used to name skipped rows). Rows are sorted by length and right-padded
    into batches of at most ``batch_tokens`` cells, with an attention mask; padding sits
    after every real token, so causal attention makes the result equal to running each
    conversation alone. Token losses are computed in fp32 and summed in float64.
    Malformed rows are skipped with a reason, never crash the batch.
    """
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    start_time = time.perf_counter()
    device = torch.device(device) if device is not None else _model_device(model)
    vocab = vocab_size or int(model.get_input_embeddings().num_embeddings)
    ids_flat, offsets, ids_null = _list_column(rows, "input_ids", np.int64)
    mask_flat, mask_offsets, mask_null = _list_column(rows, "loss_mask", np.int64)
    n = rows.height
    keys = rows["conversation_id"].cast(pl.String).to_list() if "conversation_id" in rows.columns else None
    lengths = np.diff(offsets)
    skipped: list[Skipped] = []
    bad = np.zeros(n, dtype=bool)
    bad_tokens = _row_counts((ids_flat < 0) | (ids_flat >= vocab), offsets[:-1], offsets[1:])
    for i in range(n):
        key = keys[i] if keys is not None else f"row {i}"
        if ids_null[i] or mask_null[i]:
            skipped.append(Skipped(key, "null_row", f"row {i}: input_ids or loss_mask is null"))
        elif lengths[i] != mask_offsets[i + 1] - mask_offsets[i]:
            skipped.append(
                Skipped(
                    key,
                    "length_mismatch",
                    f"row {i}: {lengths[i]} input_ids but {mask_offsets[i + 1] - mask_offsets[i]} loss_mask "
                    "entries; re-tokenize this partition",
                )
            )
        elif lengths[i] and bad_tokens[i]:
            row_ids = ids_flat[offsets[i] : offsets[i + 1]]
            worst = int(row_ids[(row_ids < 0) | (row_ids >= vocab)][0])
            skipped.append(
                Skipped(
                    key,
                    "token_out_of_vocab",
                    f"row {i}: token id {worst} is outside the model's vocabulary of {vocab}; evaluate with "
                    "the model whose tokenizer made these shards",
                )
            )
        else:
            continue
        bad[i] = True

    # Targets: token t counts where mask[t] == 1 and t >= 1 (the first token has no context).
    first_target = np.minimum(mask_offsets[:-1] + 1, mask_offsets[1:])
    row_tokens = np.where(bad, 0, _row_counts(mask_flat == 1, first_target, mask_offsets[1:]))
    row_sum = np.zeros(n, dtype=np.float64)
    todo = np.nonzero(row_tokens > 0)[0]
    order = todo[np.argsort(-lengths[todo], kind="stable")]
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", None)
    pad_id = pad_id if isinstance(pad_id, int) and 0 <= pad_id < vocab else 0
    was_training = model.training
    model.eval()
    tokens = padded = 0
    try:
        for batch in _length_batches(lengths, order, batch_tokens):
            width = int(lengths[batch[0]])
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            targets_mask = torch.zeros((len(batch), width), dtype=torch.bool)
            for j, i in enumerate(batch):
                a, b = offsets[i], offsets[i + 1]
                input_ids[j, : b - a] = torch.from_numpy(ids_flat[a:b])
                attention[j, : b - a] = 1
                ma, mb = mask_offsets[i], mask_offsets[i + 1]
                targets_mask[j, : mb - ma] = torch.from_numpy(mask_flat[ma:mb] == 1)
            tokens += int(attention.sum())
            padded += input_ids.numel()
            input_ids, attention = input_ids.to(device), attention.to(device)
            logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
            select = targets_mask[:, 1:].to(device)
            token_loss = F.cross_entropy(
                logits[:, :-1][select].float(), input_ids[:, 1:][select], reduction="none"
            ).double()
            row_index = torch.arange(len(batch), device=device)[:, None].expand(-1, width - 1)[select]
            sums = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, row_index, token_loss)
            row_sum[batch] = sums.cpu().numpy()
    finally:
        model.train(was_training)
    return LossTotals(
        loss_sum=float(row_sum.sum()),
        loss_tokens=int(row_tokens.sum()),
        row_loss_sum=row_sum,
        row_loss_tokens=row_tokens,
        skipped=skipped,
        skipped_rows=bad,
        tokens=tokens,
        padded_tokens=padded,
        seconds=time.perf_counter() - start_time,
    )


def _perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    try:
        return math.exp(loss)
    except OverflowError:  # only for a diverged model; JSON has no infinity
        return None


def loss_summary(loss_sum: float, loss_tokens: int, conversations: int) -> dict[str, Any]:
    """{loss, perplexity, loss_tokens, conversations}; loss is the mean per loss token (None without tokens)."""
    loss = loss_sum / loss_tokens if loss_tokens else None
    return {
        "loss": loss,
        "perplexity": _perplexity(loss),
        "loss_tokens": int(loss_tokens),
        "conversations": int(conversations),
    }


def evaluate_loss_by(
    model: torch.nn.Module,
    rows: pl.DataFrame,
    *,
    batch_tokens: int = 4096,
    device: str | torch.device | None = None,
    splits: Sequence[str] = HELDOUT_SPLITS,
) -> dict[str, Any]:
    """Masked loss per split and per split x kind.

    ``rows``: input_ids, loss_mask, split, kind (null kind -> "unknown"), conversation_id
    optional. Returns ``{"splits": {split: summary}, "by_kind": {split: {kind: summary}},
    "skipped": [...], "skipped_by_reason": {...}, "tokens", "padding_efficiency", "seconds",
    "tokens_per_second"}``, each summary as ``loss_summary``. Every split named in
    ``splits`` is present, with loss None when it has no loss tokens.
    """
    for name in ("split", "kind"):
        if name not in rows.columns:
            raise ValueError(
                f"rows need a {name!r} column; join the shard rows with curated.conversations on "
                "conversation_id (see heldout_rows)"
            )
    totals = masked_loss(model, rows, batch_tokens=batch_tokens, device=device)
    frame = pl.DataFrame(
        {
            "split": rows["split"].cast(pl.String),
            "kind": rows["kind"].cast(pl.String).fill_null("unknown"),
            "s": totals.row_loss_sum,
            "n": totals.row_loss_tokens,
            "ok": ~totals.skipped_rows,
        }
    ).filter(pl.col("ok"))
    by_split = frame.group_by("split").agg(pl.col("s").sum(), pl.col("n").sum(), pl.len().alias("c"))
    by_kind = frame.group_by("split", "kind").agg(pl.col("s").sum(), pl.col("n").sum(), pl.len().alias("c"))
    out_splits = {split: loss_summary(0.0, 0, 0) for split in splits}
    for row in by_split.sort("split").iter_rows(named=True):
        out_splits[row["split"]] = loss_summary(row["s"], row["n"], row["c"])
    out_kinds: dict[str, dict[str, Any]] = {split: {} for split in out_splits}
    for row in by_kind.sort("split", "kind").iter_rows(named=True):
        out_kinds.setdefault(row["split"], {})[row["kind"]] = loss_summary(row["s"], row["n"], row["c"])
    return {
        "splits": out_splits,
        "by_kind": out_kinds,
        "skipped": [s.as_dict() for s in totals.skipped],
        "skipped_by_reason": _count_reasons(totals.skipped),
        "tokens": totals.tokens,
        "padding_efficiency": totals.tokens / totals.padded_tokens if totals.padded_tokens else 1.0,
        "seconds": totals.seconds,
        "tokens_per_second": totals.tokens / totals.seconds if totals.seconds > 0 else 0.0,
    }


def heldout_rows(
    shard_dirs: Sequence[str | Path],
    conversations: pl.DataFrame | None = None,
    *,
    splits: Sequence[str] = HELDOUT_SPLITS,
) -> pl.DataFrame:
    """Held-out shard rows (conversation_id, split, kind, input_ids, loss_mask) from verified shard dirs.

    ``conversations`` (conversation_id, kind) supplies the kind; ids it lacks get "unknown".
    A shard directory whose files fail their manifest checksums is refused: an eval on
    corrupted data would be a wrong number with a trustworthy look.
    """
    frames = []
    for shard_dir in map(Path, shard_dirs):
        manifest = read_verified_manifest(shard_dir)
        for split in splits:
            part = read_split(shard_dir, split, manifest)
            frames.append(part.with_columns(pl.lit(split).alias("split")))
    schema = {
        "conversation_id": pl.String,
        "split": pl.String,
        "input_ids": pl.List(pl.Int32),
        "loss_mask": pl.List(pl.UInt8),
    }
    rows = pl.concat([f.select(list(schema)).cast(schema) for f in frames]) if frames else pl.DataFrame(schema=schema)
    if conversations is None:
        return rows.with_columns(pl.lit("unknown").alias("kind"))
    kinds = conversations.select(pl.col("conversation_id").cast(pl.String), pl.col("kind").cast(pl.String))
    kinds = kinds.unique("conversation_id", keep="first")
    return rows.join(kinds, on="conversation_id", how="left", maintain_order="left").with_columns(
        pl.col("kind").fill_null("unknown")
    )


# ======================================================================================
# Title matching


_ARTICLES = frozenset({"the", "a", "an"})
_TOKEN_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|&")
_YEAR_AFTER_RE = re.compile(r"[\s*_\"'“”]*[(\[]\s*((?:18|19|20)\d{2})\s*[)\]]")
_LIST_MARKER_RE = re.compile(r"^[ \t]*(?:\d{1,3}[ \t]*[.):\]-]|[-*•·])[ \t]+", re.MULTILINE)
_TRAILING_ARTICLE_RE = re.compile(r"^(.*\S)\s*,\s*(the|a|an)\s*$", re.IGNORECASE)


def _fold(token: str) -> str:
    """Casefolded, accent-free, apostrophe-free form of one word."""
    if token == "&":
        return "and"
    decomposed = unicodedata.normalize("NFKD", token.replace("'", "").replace("’", ""))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _title_words(title: str) -> tuple[str, ...]:
    """Folded words of a title, articles kept; "Matrix, The" (MovieLens style) reads "the matrix"."""
    text = unicodedata.normalize("NFC", title).strip()
    moved = _TRAILING_ARTICLE_RE.match(text)
    if moved:
        text = f"{moved.group(2)} {moved.group(1)}"
    return tuple(w for w in (_fold(m.group()) for m in _TOKEN_RE.finditer(text)) if w)


def normalize_title(title: str) -> tuple[str, ...]:
    """Match key of a title: NFC, casefold, accents/punctuation/articles dropped.

    ``"The Matrix"``, ``"Matrix, The"`` and ``"the matrix!"`` all give ``("matrix",)``.
    """
    return tuple(w for w in _title_words(title) if w not in _ARTICLES)


@dataclass(frozen=True)
class TitleMatch:
    """One catalog title found in a text; ``how`` is list | year | free."""

    title_id: str
    start: int  # character offsets in the NFC-normalized text
    end: int
    how: str
    year: int | None  # the year written after the title, if any


class TitleMatcher:
    """The catalog indexed once for matching titles in generated text.

    A match is a run of words equal to a catalog title's normalized key (longest run
    wins). It counts when it starts a numbered/bulleted list item (``how="list"``), is
    followed by a year in parentheses (``"year"``), or has at least ``min_free_words``
    words (``"free"``): one-word titles like "Up" are taken only where the text is
    clearly naming a title. Among titles sharing a key, the one with the written year
    wins, then the one whose articles match the text ("The Velvet Painter" vs "Velvet
    Painter"), then the closest year, then catalog order (pass the catalog sorted by
    popularity to prefer popular titles).
    """

    def __init__(self, catalog: pl.DataFrame, *, min_free_words: int = 2) -> None:
        for name in ("title_id", "title"):
            if name not in catalog.columns:
                raise ValueError(f"catalog needs a {name!r} column (raw.catalog); it has {catalog.columns}")
        years = catalog["year"].to_list() if "year" in catalog.columns else [None] * catalog.height
        self.min_free_words = min_free_words
        self._by_key: dict[tuple[str, ...], list[tuple[str, int | None, tuple[str, ...]]]] = {}
        self._prefixes: set[tuple[str, ...]] = set()
        self._display: dict[str, str] = {}
        self.unindexed: list[str] = []  # title_ids whose title has no matchable word
        for title_id, title, year in zip(catalog["title_id"].to_list(), catalog["title"].to_list(), years, strict=True):
            if title_id is None or title is None or title_id in self._display:
                continue
            year = int(year) if year is not None else None
            self._display[title_id] = f"{title} ({year})" if year is not None else title
            full = _title_words(title)
            key = tuple(w for w in full if w not in _ARTICLES)
            if not key:
                self.unindexed.append(title_id)
                continue
            self._by_key.setdefault(key, []).append((title_id, year, full))
            self._prefixes.update(key[:k] for k in range(1, len(key) + 1))

    def __len__(self) -> int:
        return len(self._display)

    def display(self, title_id: str) -> str:
        """``Title (Year)`` as the catalog has it (the id itself when unknown)."""
        return self._display.get(title_id, title_id)

    def _choose(self, key: tuple[str, ...], year: int | None, written: tuple[str, ...]) -> str:
        candidates = self._by_key[key]
        if len(candidates) == 1:
            return candidates[0][0]

        def rank(candidate: tuple[str, int | None, tuple[str, ...]]) -> tuple[bool, bool, int]:
            _, cand_year, full = candidate
            distance = abs(cand_year - year) if year is not None and cand_year is not None else 10_000
            return (year is None or cand_year != year, full != written, distance)

        return min(candidates, key=rank)[0]  # min keeps catalog order among equals

    def find(self, text: str) -> list[TitleMatch]:
        """Every accepted title occurrence in ``text``, in text order."""
        text = unicodedata.normalize("NFC", text)
        marker_spans = [(m.start(), m.end()) for m in _LIST_MARKER_RE.finditer(text)]
        item_starts = [end for _, end in marker_spans]
        raw: list[tuple[str, int, int]] = []  # every folded word, articles included
        words: list[tuple[str, int, int]] = []  # the words keys are made of
        raw_index: list[int] = []  # position of each of ``words`` in ``raw``
        for m in _TOKEN_RE.finditer(text):
            w = _fold(m.group())
            if not w:
                continue
            k = bisect.bisect_right(item_starts, m.start()) - 1
            if k >= 0 and marker_spans[k][0] <= m.start() < marker_spans[k][1]:
                continue  # the "1." of a list marker is not part of a title
            raw.append((w, m.start(), m.end()))
            if w not in _ARTICLES:
                words.append((w, m.start(), m.end()))
                raw_index.append(len(raw) - 1)
        # First word of each list item: the first word after its marker, on the same line.
        item_first: set[int] = set()
        starts = [s for _, s, _ in words]
        for pos in item_starts:
            j = bisect.bisect_left(starts, pos)
            if j < len(words) and "\n" not in text[pos : words[j][1]]:
                item_first.add(j)
        found: list[TitleMatch] = []
        i = 0
        while i < len(words):
            best = None
            j = i
            key: tuple[str, ...] = ()
            while j < len(words):
                key = (*key, words[j][0])
                if key not in self._prefixes:
                    break
                if key in self._by_key:
                    best = (j, key)
                j += 1
            if best is None:
                i += 1
                continue
            last, key = best
            end = words[last][2]
            after = _YEAR_AFTER_RE.match(text, end)
            year = int(after.group(1)) if after else None
            if i in item_first:
                how = "list"
            elif year is not None:
                how = "year"
            elif len(key) >= self.min_free_words:
                how = "free"
            else:
                i += 1
                continue
            lo, hi = raw_index[i], raw_index[last]
            if lo > 0 and raw[lo - 1][0] in _ARTICLES and not text[raw[lo - 1][2] : raw[lo][1]].strip():
                lo -= 1  # the article written right before the title ("The Velvet Painter")
            written = tuple(w for w, _, _ in raw[lo : hi + 1])
            found.append(TitleMatch(self._choose(key, year, written), words[i][1], end, how, year))
            stop = after.end() if after else end
            i = last + 1
            while i < len(words) and words[i][1] < stop:
                i += 1
        return found

    def match(self, text: str) -> list[str]:
        """Recommended title ids in ``text``: list items and ``Title (Year)`` mentions first, in order,
        then titles named in free text; unknown titles skipped, duplicates dropped (first kept)."""
        found = self.find(text)
        ordered = [m for m in found if m.how != "free"] + [m for m in found if m.how == "free"]
        return list(dict.fromkeys(m.title_id for m in ordered))


def match_titles(text: str, catalog: TitleMatcher | pl.DataFrame) -> list[str]:
    """Title ids recommended in ``text`` (see ``TitleMatcher.match``); build the matcher once for many texts."""
    matcher = catalog if isinstance(catalog, TitleMatcher) else TitleMatcher(catalog)
    return matcher.match(text)


# ======================================================================================
# Recommendation cases and metrics


@dataclass(frozen=True)
class RecoCase:
    """One held-out recommendation: serve ``prompt_messages``, expect ``target_title_id`` first."""

    conversation_id: str
    split: str
    prompt_messages: tuple[dict[str, str], ...]  # everything before the first assistant turn
    target_title_id: str
    target: str  # "Title (Year)" as the catalog has it
    history_title_ids: tuple[str, ...]  # titles named in the prompt's user turns


def recommendation_prompts(
    conversations: pl.DataFrame,
    matcher: TitleMatcher,
    *,
    splits: Sequence[str] = HELDOUT_SPLITS,
) -> tuple[list[RecoCase], list[Skipped]]:
    """Recommendation cases from held-out ``kind == "recommendation"`` conversations.

    ``conversations`` has the curated.conversations columns (conversation_id, kind, split,
    messages). The target is the first title the first assistant turn lists (a list item
    or ``Title (Year)``). Cases come sorted by conversation_id (a hash, so any prefix is
    an unbiased sample); conversations without a usable target come back as Skipped.
    """
    missing = [c for c in ("conversation_id", "kind", "split", "messages") if c not in conversations.columns]
    if missing:
        raise ValueError(f"conversations are missing columns {missing}; pass curated.conversations rows")
    rows = conversations.filter((pl.col("kind") == "recommendation") & pl.col("split").is_in(list(splits))).sort(
        "conversation_id"
    )
    cases: list[RecoCase] = []
    skipped: list[Skipped] = []
    for cid, split, messages in rows.select("conversation_id", "split", "messages").iter_rows():
        messages = [{"role": m["role"], "content": m["content"]} for m in messages or []]
        first = next((k for k, m in enumerate(messages) if m["role"] == "assistant"), None)
        if first is None or first == 0:
            skipped.append(Skipped(cid, "no_assistant_turn", f"roles are {[m['role'] for m in messages]}"))
            continue
        listed = [m for m in matcher.find(messages[first]["content"] or "") if m.how != "free"]
        if not listed:
            answer = (messages[first]["content"] or "")[:120]
            skipped.append(Skipped(cid, "no_target_title", f"first assistant turn {answer!r} lists no catalog title"))
            continue
        prompt = tuple(messages[:first])
        history: list[str] = []
        for m in prompt:
            if m["role"] == "user":
                history.extend(matcher.match(m["content"] or ""))
        target = listed[0].title_id
        cases.append(
            RecoCase(
                conversation_id=cid,
                split=split,
                prompt_messages=prompt,
                target_title_id=target,
                target=matcher.display(target),
                history_title_ids=tuple(dict.fromkeys(t for t in history if t != target)),
            )
        )
    return cases, skipped


def hit_at_k(recommended: Sequence[Sequence[str]], targets: Sequence[str], k: int) -> float:
    """Share of cases whose target is among the first ``k`` recommendations (0.0 for no cases)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(recommended) != len(targets):
        raise ValueError(f"{len(recommended)} recommendation lists for {len(targets)} targets")
    if not targets:
        return 0.0
    return sum(t in list(r[:k]) for r, t in zip(recommended, targets, strict=True)) / len(targets)


def _hits(recommended: Sequence[Sequence[str]], targets: Sequence[str], ks: Sequence[int]) -> dict[str, float]:
    return {f"hit@{k}": hit_at_k(recommended, targets, k) for k in ks}


def popularity_ranking(source: Mapping[str, int] | pl.DataFrame) -> list[str]:
    """Title ids, most popular first (ties by title_id).

    ``source``: {title_id: count}, a frame with title_id and count, or interaction events
    (title_id, optional event: only watch events count; each row counts once). Count only
    training data (e.g. train-split members' events) so the baseline cannot peek at targets.
    """
    if isinstance(source, Mapping):
        counts = pl.DataFrame(
            {"title_id": list(source), "count": [int(v) for v in source.values()]},
            schema={"title_id": pl.String, "count": pl.Int64},
        )
    else:
        frame = source
        if "title_id" not in frame.columns:
            raise ValueError(f"popularity source needs a 'title_id' column; it has {frame.columns}")
        if "count" in frame.columns:
            counts = frame.group_by("title_id").agg(pl.col("count").sum())
        else:
            if "event" in frame.columns:
                frame = frame.filter(pl.col("event").is_in(WATCH_EVENTS))
            counts = frame.group_by("title_id").agg(pl.len().alias("count"))
    counts = counts.filter(pl.col("title_id").is_not_null())
    return counts.sort(["count", "title_id"], descending=[True, False])["title_id"].to_list()


def popularity_baseline(ranking: Sequence[str], k: int, exclude: Iterable[str] = ()) -> list[str]:
    """The ``k`` most popular titles the member has not already watched."""
    seen = set(exclude)
    out: list[str] = []
    for title_id in ranking:
        if title_id not in seen:
            out.append(title_id)
            if len(out) == k:
                break
    return out


def evaluate_popularity(
    cases: Sequence[RecoCase], ranking: Sequence[str], *, limit: int | None = None, ks: Sequence[int] = (1, 5)
) -> dict[str, Any]:
    """hit@k of the popularity baseline on ``cases`` (history excluded per case)."""
    cases = list(cases[:limit] if limit is not None else cases)
    recs = [popularity_baseline(ranking, max(ks), c.history_title_ids) for c in cases]
    targets = [c.target_title_id for c in cases]
    return {**_hits(recs, targets, ks), "n": len(cases), "by_split": _by_split(cases, recs, ks)}


def _by_split(cases: Sequence[RecoCase], recs: Sequence[Sequence[str]], ks: Sequence[int]) -> dict[str, Any]:
    out = {}
    for split in sorted({c.split for c in cases}):
        idx = [i for i, c in enumerate(cases) if c.split == split]
        out[split] = {
            **_hits([recs[i] for i in idx], [cases[i].target_title_id for i in idx], ks),
            "n": len(idx),
        }
    return out


# ======================================================================================
# Generation


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn: the template's end-of-turn token, then eos.

    The end-of-turn token is found the way loss masks find it: the added token the
    template places right after an assistant turn's content (the last masked token).
    """
    ids: list[int] = []
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    try:
        encoded = encode_conversation(tokenizer, probe)
        last = max(i for i, m in enumerate(encoded.loss_mask) if m == 1)
        candidate = encoded.input_ids[last]
        if candidate in tokenizer.added_tokens_decoder:
            ids.append(int(candidate))
    except (MaskError, ValueError, TypeError):
        pass
    eos = tokenizer.eos_token_id
    for tid in eos if isinstance(eos, list) else [eos]:
        if tid is not None and tid not in ids:
            ids.append(int(tid))
    if not ids:
        raise ValueError(
            "the tokenizer has no end-of-turn or eos token, so generation could not stop; set "
            "tokenizer.eos_token to the token the chat template puts after an assistant turn"
        )
    return ids


def encode_prompts(tokenizer: Any, cases: Sequence[RecoCase]) -> tuple[list[list[int] | None], list[Skipped]]:
    """Serving-path prompt ids per case (``core.masking.encode_prompt``, add_generation_prompt=True)."""
    out: list[list[int] | None] = []
    skipped: list[Skipped] = []
    for case in cases:
        try:
            out.append(encode_prompt(tokenizer, list(case.prompt_messages)))
        except MaskError as err:
            out.append(None)
            skipped.append(Skipped(case.conversation_id, "prompt_error", f"{err.reason}: {err.detail}"))
    return out, skipped


@torch.no_grad()
def generate_greedy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 96,
    device: str | torch.device | None = None,
) -> list[list[int]]:
    """Greedy continuations (new token ids, stop token excluded) of ``prompts``, batched.

    Prompts are sorted by length and left-padded, so every row's last prompt token is
    adjacent to its first generated token; decoding stops at the end-of-turn token.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size ({batch_size}) and max_new_tokens ({max_new_tokens}) must be >= 1")
    device = torch.device(device) if device is not None else _model_device(model)
    stops = end_of_turn_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=pad_id,
        use_cache=True,
    )
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, i in enumerate(chunk):
                n = len(prompts[i])
                input_ids[j, width - n :] = torch.tensor(list(prompts[i]), dtype=torch.long)
                attention[j, width - n :] = 1
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config
            )
            for j, i in enumerate(chunk):
                new = out[j, width:].tolist()
                cut = next((k for k, t in enumerate(new) if t in stops), len(new))
                results[i] = new[:cut]
    finally:
        model.train(was_training)
    return results


def evaluate_recommendations(
    model: Any,
    tokenizer: Any,
    cases: Sequence[RecoCase],
    matcher: TitleMatcher,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 96,
    limit: int | None = None,
    n_samples: int = 5,
    ks: Sequence[int] = (1, 5),
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """hit@k of greedy generations on ``cases`` (the first ``limit`` of them).

    Returns {hit@1, hit@5, n, by_split, no_title_outputs, mean_titles, skipped,
    skipped_by_reason, samples, per_case, generated_tokens, seconds}. Cases whose
    prompt cannot be served are skipped with a reason and left out of n.
    """
    start_time = time.perf_counter()
    cases = list(cases[:limit] if limit is not None else cases)
    prompts, skipped = encode_prompts(tokenizer, cases)
    max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    keep: list[int] = []
    for i, ids in enumerate(prompts):
        if ids is None:
            continue
        if isinstance(max_positions, int) and len(ids) + max_new_tokens > max_positions:
            skipped.append(
                Skipped(
                    cases[i].conversation_id,
                    "prompt_too_long",
                    f"{len(ids)} prompt tokens + {max_new_tokens} new > {max_positions} positions",
                )
            )
            continue
        keep.append(i)
    kept_prompts = [prompts[i] for i in keep]
    generated = generate_greedy(
        model, tokenizer, kept_prompts, batch_size=batch_size, max_new_tokens=max_new_tokens, device=device
    )
    kept = [cases[i] for i in keep]
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in generated]
    recs = [matcher.match(text) for text in texts]
    targets = [c.target_title_id for c in kept]
    per_case = [
        {"conversation_id": c.conversation_id, "split": c.split, "target": c.target_title_id, "recommended": r}
        for c, r in zip(kept, recs, strict=True)
    ]
    samples = []
    for c, ids, text, r in list(zip(kept, kept_prompts, texts, recs, strict=True))[:n_samples]:
        samples.append(
            {
                "conversation_id": c.conversation_id,
                "prompt": tokenizer.decode(ids, skip_special_tokens=False),
                "generated": text,
                "target": c.target,
                "recommended": [matcher.display(t) for t in r[: max(ks)]],
                "hit@1": c.target_title_id in r[:1],
                f"hit@{max(ks)}": c.target_title_id in r[: max(ks)],
            }
        )
    return {
        **_hits(recs, targets, ks),
        "n": len(kept),
        "by_split": _by_split(kept, recs, ks),
        "no_title_outputs": sum(1 for r in recs if not r),
        "mean_titles": sum(len(r) for r in recs) / len(recs) if recs else 0.0,
        "skipped": [s.as_dict() for s in skipped],
        "skipped_by_reason": _count_reasons(skipped),
        "samples": samples,
        "per_case": per_case,
        "generated_tokens": sum(len(g) for g in generated),
        "seconds": time.perf_counter() - start_time,
    }
