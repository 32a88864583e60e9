"""Preference pairs to token ids: the prompt once, then each completion with its exact loss mask.

Each side, prompt + completion, is encoded as a conversation by the masking engine (core.masking), with the
tokenizer's own chat template, so a pair gets exactly the masks and train/serve guarantees SFT rows get. Then:

- the completion starts at the last masked run (the final assistant turn's content); the tokens before it are
  the prompt as served (the engine checked them against the rendered generation prompt);
- both sides must share those prompt tokens exactly, or the pair cannot be trained with the prompt computed
  once: quarantined as ``prompt_mismatch``;
- earlier assistant turns inside the prompt carry no loss: preference training scores only the completion;
- a pair whose completions are the start of a longer answer (``OPEN_ENDED_KINDS``: a behaviour pair names the
  first title of a recommendation list) leaves the end-of-turn token out of the loss. Its preference is which
  title comes first, as the evaluation scores candidates; scoring the end of the turn would teach the model to
  stop after one title, against the answers SFT taught it.

A side the engine cannot mask exactly quarantines the whole pair with the engine's reason code.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from core.masking import (
    DEFAULT_REWRITE_POLICY,
    RewritePolicy,
    close_end,
    encode_with_policy,
    end_of_turn_ids,
    open_end,
    paused_gc,
)
from core.schemas import CONVERSATION_QUARANTINE_SCHEMA, quarantine_frame
from core.shards import ShardLayout

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Reasons only pair tokenization gives (the engine's MASK_REASONS come through as they are).
PAIR_TOKEN_REASONS: dict[str, str] = {
    "prompt_mismatch": "the prompt renders to different tokens before the chosen and before the rejected completion, "
    "so the pair cannot share one prompt",
}

OPEN_ENDED_KINDS = ("behaviour",)  # pair kinds whose completions begin a longer answer (module docstring)

PAIR_SHARD_POLARS_SCHEMA: dict[str, pl.DataType] = {
    "pair_id": pl.String,
    "prompt_ids": pl.List(pl.Int32),
    "chosen_ids": pl.List(pl.Int32),
    "chosen_mask": pl.List(pl.UInt8),
    "rejected_ids": pl.List(pl.Int32),
    "rejected_mask": pl.List(pl.UInt8),
}


@dataclass
class TokenizedPairs:
    rows: pl.DataFrame  # split + PAIR_SHARD_POLARS_SCHEMA
    quarantine: pl.DataFrame  # CONVERSATION_QUARANTINE_SCHEMA, conversation_id = pair_id
    seconds: float


def completion_start(mask: list[int]) -> int:
    """Index of the first token of the last masked run: where the final assistant turn's content begins."""
    arr = np.asarray(mask, dtype=np.int8)
    ones = np.flatnonzero(arr)
    if len(ones) == 0:
        raise ValueError("a side without masked tokens has no completion")
    gaps = np.flatnonzero(np.diff(ones) > 1)
    return int(ones[gaps[-1] + 1]) if len(gaps) else int(ones[0])


def _last_turn_examples(outcome: object, last_turn: list[int]) -> dict[int, tuple[list[int], list[int]]]:
    """conversation index -> (ids, mask) of the row that masks its final turn (the whole row, or its expansion)."""
    found: dict[int, tuple[list[int], list[int]]] = {}
    for example in outcome.examples:  # type: ignore[attr-defined]
        if example.target_turn is None or example.target_turn == last_turn[example.index]:
            found[example.index] = (list(example.encoded.input_ids), list(example.encoded.loss_mask))
    return found


def tokenize_pairs(
    tokenizer: PreTrainedTokenizerBase,
    pairs: pl.DataFrame,
    day: date,
    *,
    max_length: int | None,
    rewrite_policy: RewritePolicy = DEFAULT_REWRITE_POLICY,
) -> TokenizedPairs:
    """Token rows of curated pairs (sorted by pair_id); pairs that cannot be encoded exactly are quarantined.

    ``max_length`` bounds each side (prompt + completion); a longer side quarantines the pair (``too_long``).
    """
    ordered = pairs.sort("pair_id")
    ids = ordered["pair_id"].to_list()
    with paused_gc():
        prompts = ordered["prompt"].to_list()
        sides = {s: [p + c for p, c in zip(prompts, ordered[s].to_list(), strict=True)] for s in ("chosen", "rejected")}
        last_turn = [len(p) for p in prompts]
        start = time.perf_counter()
        encoded = {}
        rejects: dict[int, tuple[str, str]] = {}
        for side, conversations in sides.items():
            outcome = encode_with_policy(
                tokenizer, conversations, policy=rewrite_policy, max_length=max_length, overlong="quarantine"
            )
            for i, reason, detail in outcome.rejects:
                rejects.setdefault(i, (reason, f"{side}: {detail}"))
            encoded[side] = _last_turn_examples(outcome, last_turn)
        rows: dict[str, list[object]] = {c: [] for c in ("split", *PAIR_SHARD_POLARS_SCHEMA)}
        splits = ordered["split"].to_list()
        open_ended = _open_ended(ordered)
        end_ids = set(end_of_turn_ids(tokenizer)) if any(open_ended) else set()
        for i, pair_id in enumerate(ids):
            if i in rejects:
                continue
            (c_ids, c_mask), (r_ids, r_mask) = encoded["chosen"][i], encoded["rejected"][i]
            k_c, k_r = completion_start(c_mask), completion_start(r_mask)
            if k_c != k_r or c_ids[:k_c] != r_ids[:k_r]:
                rejects[i] = (
                    "prompt_mismatch",
                    f"the prompt is {k_c} tokens before the chosen completion and {k_r} before the rejected one, "
                    "with different ids; the chat template renders the prompt differently per completion",
                )
                continue
            rows["split"].append(splits[i])
            rows["pair_id"].append(pair_id)
            rows["prompt_ids"].append(c_ids[:k_c])
            if open_ended[i]:
                c_mask, r_mask = open_end(c_ids, c_mask, end_ids), open_end(r_ids, r_mask, end_ids)
            rows["chosen_ids"].append(c_ids[k_c:])
            rows["chosen_mask"].append(c_mask[k_c:])
            rows["rejected_ids"].append(r_ids[k_r:])
            rows["rejected_mask"].append(r_mask[k_r:])
        seconds = time.perf_counter() - start
        frame = pl.DataFrame(rows, schema={"split": pl.String, **PAIR_SHARD_POLARS_SCHEMA})
        bad = sorted(rejects)
        payloads = [
            json.dumps(
                {
                    "prompt": prompts[i],
                    "chosen": sides["chosen"][i][last_turn[i] :],
                    "rejected": sides["rejected"][i][last_turn[i] :],
                },
                ensure_ascii=False,
            )
            for i in bad
        ]
        quarantine = quarantine_frame(
            {
                "conversation_id": [ids[i] for i in bad],
                "day": [day] * len(bad),
                "reason": [rejects[i][0] for i in bad],
                "detail": [rejects[i][1] for i in bad],
                "payload": payloads,
            },
            CONVERSATION_QUARANTINE_SCHEMA,
        )
    return TokenizedPairs(rows=frame, quarantine=quarantine, seconds=seconds)


def _open_ended(pairs: pl.DataFrame) -> list[bool]:
    if "kind" not in pairs.columns:
        return [False] * pairs.height
    return pairs["kind"].is_in(list(OPEN_ENDED_KINDS)).fill_null(False).to_list()


def pair_conversation(
    prompt_ids: list[int], completion_ids: list[int], completion_mask: list[int]
) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask) of one side as a plain sequence: the prompt unmasked, then the completion."""
    return list(prompt_ids) + list(completion_ids), [0] * len(prompt_ids) + list(completion_mask)


def audit_pairs(
    tokenizer: PreTrainedTokenizerBase,
    rows: pl.DataFrame,
    curated: pl.DataFrame,
    *,
    sample: int = 0,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], int]:
    """(mask failures, serving failures, rows checked): each side's masked tokens decode to its completion
    (+ end-of-turn, which an open-ended pair leaves unmasked), and the prompt tokens equal the served generation
    prompt, checked by core.masking.verify independently of how the rows were built. ``sample`` rows (evenly
    spaced; 0 = all) get the serving check."""
    from core.masking import verify_masks, verify_serving_prefix

    kind = [pl.col("kind")] if "kind" in curated.columns else []
    joined = rows.join(curated.select("pair_id", "prompt", "chosen", "rejected", *kind), on="pair_id", how="left")
    open_ended = _open_ended(joined)
    end_ids = set(end_of_turn_ids(tokenizer)) if any(open_ended) else set()
    masks: list[tuple[str, str]] = []
    serving: list[tuple[str, str]] = []
    step = max(1, joined.height // sample) if sample else 1
    for n, row in enumerate(joined.iter_rows(named=True)):
        if row["prompt"] is None:
            masks.append((row["pair_id"], "row has no curated pair"))
            continue
        turn = len(row["prompt"])
        for side in ("chosen", "rejected"):
            messages = row["prompt"] + row[side]
            ids, mask = pair_conversation(row["prompt_ids"], row[f"{side}_ids"], row[f"{side}_mask"])
            if open_ended[n]:
                mask = close_end(ids, mask, end_ids)
            problem = verify_masks(tokenizer, messages, ids, mask, target_turn=turn)
            if problem:
                masks.append((row["pair_id"], f"{side}: {problem}"))
            if n % step == 0:
                problem = verify_serving_prefix(tokenizer, messages, ids, mask, target_turn=turn)
                if problem:
                    serving.append((row["pair_id"], f"{side}: {problem}"))
    return masks, serving, joined.height


PAIR_LAYOUT = ShardLayout(
    "preference_pairs",
    PAIR_SHARD_POLARS_SCHEMA,
    "pairs",
    ("prompt_ids", "chosen_ids", "rejected_ids"),
    ("chosen_mask", "rejected_mask"),
)
