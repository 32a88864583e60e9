"""Independent verification of finished encodings, for asset checks and tests.

Neither check reuses how the encoder built the mask: ``verify_masks`` decodes the masked
runs, ``verify_serving_prefix`` re-tokenizes serving prompts with transformers' stock
``apply_chat_template`` (or ``encode_prompt`` for rows with control-token lookalikes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from core.masking.lookalikes import content_has_lookalike
from core.masking.reasons import MaskError
from core.masking.serving_prompt import encode_prompt
from core.masking.tokenizer_info import info_for


def _runs(mask: Sequence[int]) -> list[tuple[int, int]]:
    """The ``[start, stop)`` token ranges where ``mask`` is 1, in order."""
    runs: list[tuple[int, int]] = []
    start = None
    for k, v in enumerate([*mask, 0]):
        if v and start is None:
            start = k
        elif not v and start is not None:
            runs.append((start, k))
            start = None
    return runs


def verify_masks(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    input_ids: Sequence[int],
    loss_mask: Sequence[int],
    *,
    truncated: bool = False,
    target_turn: int | None = None,
    as_rendered: bool = False,
) -> str | None:
    """None if the mask follows the rule, else what is wrong.

    Independent of how the mask was built: the masked runs, in order, must decode to
    each assistant content followed by its end-of-turn token (an added token; when the
    template puts none there, the content alone), content must hold no control token,
    and nothing else may be masked. With ``truncated=True`` the last run may stop early
    at the end of the sequence. Whitespace the template trims off a content may be missing
    from its run.

    ``target_turn``: the row is one turn's example (rewrite_policy="expand"): ``messages[:target_turn + 1]``
    rendered with only that last turn masked, as written. ``as_rendered``: each run is the turn as the
    full rendering shows it, so it is compared with that rendering (stock ``apply_chat_template``)
    instead of with the message text.
    """
    info = info_for(tokenizer)
    if target_turn is not None:
        messages = list(messages[: target_turn + 1])
    rendered = _stock_rendering(tokenizer, messages) if as_rendered else ""
    ids = [int(i) for i in input_ids]
    mask = [int(m) for m in loss_mask]
    if len(ids) != len(mask):
        return f"input_ids has {len(ids)} tokens but loss_mask has {len(mask)}"
    if any(m not in (0, 1) for m in mask):
        return "loss_mask holds values other than 0 and 1"
    contents = [m.get("content") for m in messages if m.get("role") == "assistant"]
    if target_turn is not None:
        contents = contents[-1:]
    runs = _runs(mask)
    if len(runs) > len(contents) or (len(runs) < len(contents) and not truncated):
        return f"{len(runs)} masked runs for {len(contents)} assistant turns"
    decode = info.plain.decode
    for k, ((a, b), content) in enumerate(zip(runs, contents, strict=False)):
        run = ids[a:b]
        if truncated and b == len(ids) and k == len(runs) - 1:
            text = decode(run, skip_special_tokens=False)
            eot_texts = [decode([i], skip_special_tokens=False) for i in info.added_ids]
            if not any((c + e).startswith(text) for c in _as_written(content) for e in ["", *eot_texts]):
                return f"truncated run {k} decodes to {text[:60]!r}, not a prefix of assistant turn {k}"
            if any(t in info.special_ids for t in run[:-1]):
                return f"truncated run {k} holds control token ids inside the assistant content"
            continue
        written = _as_written(content)
        has_eot = run[-1] in info.added_ids and (
            decode(run[:-1], skip_special_tokens=False) in written or (as_rendered and len(run) > 1)
        )
        body = run[:-1] if has_eot else run
        text = decode(body, skip_special_tokens=False)
        if as_rendered and text not in written:
            if not text or text not in rendered:
                return f"masked run {k} decodes to {text[:80]!r}, which the full rendering does not show"
        elif text not in written:
            return (
                f"masked run {k} (tokens {a}..{b}) decodes to "
                f"{decode(run, skip_special_tokens=False)[:80]!r}, expected assistant turn {k}: "
                f"{content[:80]!r}"
            )
        bad = [t for t in body if t in info.special_ids]
        if bad:
            return f"masked run {k} holds control token ids {bad} inside the assistant content"
        if not has_eot and b < len(ids) and ids[b] in info.added_ids:
            return f"the end-of-turn token {ids[b]} right after assistant turn {k} (token {b}) is not masked"
    return None


def _as_written(content: str) -> set[str]:
    """The texts a turn's run may decode to: the content, or the content with the whitespace a template trims."""
    return {content, content.strip(), content.lstrip(), content.rstrip()} - {""}


def _stock_rendering(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> str:
    """transformers' own rendering of the whole conversation, the reference for masks made as rendered."""
    return str(tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False))


def _stock_prompt_ids(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    """transformers' own serving prompt ids (whatever container apply_chat_template returns them in)."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        out = out["input_ids"]
    return [int(i) for i in out]


def _spread(n: int, k: int) -> list[int]:
    """``k`` of the indices ``range(n)``: the first, the last and evenly spaced ones between (all when n <= k)."""
    if k <= 0 or n <= k:
        return list(range(n))
    if k == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def verify_serving_prefix(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    input_ids: Sequence[int],
    loss_mask: Sequence[int],
    *,
    truncated: bool = False,
    max_turns: int | None = None,
    target_turn: int | None = None,
) -> str | None:
    """None if training and serving agree, else the first disagreement.

    For each assistant turn ``i``, the tokens before its first masked token must equal
    the serving prompt for ``messages[:i]``: transformers' stock
    ``apply_chat_template(..., add_generation_prompt=True, tokenize=True)`` where no
    message looks like a control token, else ``encode_prompt`` (stock tokenization would
    turn typed control text into control tokens; our serving path does not).

    Each check renders and tokenizes the whole history before its turn, so checking every
    turn costs time quadratic in the turns. ``max_turns`` bounds it for audits: only that
    many turns are checked, the first, the last and evenly spaced ones between (None or 0:
    every turn).

    ``target_turn``: the row is one turn's example (rewrite_policy="expand"), ``messages[:target_turn + 1]``
    with only that turn masked.
    """
    info = info_for(tokenizer)
    ids = [int(i) for i in input_ids]
    msgs = [dict(m) for m in messages]
    turns = [j for j, m in enumerate(msgs) if m.get("role") == "assistant"]
    if target_turn is not None:
        msgs = msgs[: target_turn + 1]
        turns = [target_turn]
    runs = _runs(loss_mask)
    if len(runs) > len(turns) or (len(runs) < len(turns) and not truncated):
        return f"{len(runs)} masked runs for {len(turns)} assistant turns"
    # The first message that looks like a control token: histories from there on take encode_prompt.
    lookalike_from = next(
        (
            j
            for j, m in enumerate(msgs)
            if isinstance(m.get("content"), str) and content_has_lookalike(info, m["content"])
        ),
        len(msgs),
    )
    pairs = list(zip(runs, turns, strict=False))
    for k in _spread(len(pairs), max_turns or 0):
        (first, _), turn = pairs[k]
        history = msgs[:turn]
        try:
            if lookalike_from < turn:
                expected = encode_prompt(tokenizer, history)
            else:
                expected = _stock_prompt_ids(tokenizer, history)
        except MaskError as err:
            return f"cannot build the serving prompt for message {turn}: {err}"
        if ids[:first] != expected:
            got = ids[:first]
            at = next(
                (k for k, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                min(len(got), len(expected)),
            )
            return (
                f"before message {turn} the training tokens ({len(got)}) and the serving prompt "
                f"({len(expected)}) differ at token {at}: {got[at : at + 5]} vs {expected[at : at + 5]}"
            )
    return None
