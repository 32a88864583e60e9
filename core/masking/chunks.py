"""The two stages of one chunk of conversations: validate and render, then locate, mask and check.

``encode_batch`` (pipeline) runs them on either side of the tokenizer, which works on a
helper thread in between (segments). Rejects are kept as ``(reason, detail)``, never as
raised exceptions, so no traceback (and no reference cycle) outlives a conversation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.masking import rendering
from core.masking.compiled_template import TracedMessages
from core.masking.content_spans import Shadow, shadow_spans
from core.masking.locate_turns import ServingPrompts, locate_turns
from core.masking.lookalikes import content_has_lookalike, segment_encode
from core.masking.masks import EncodedConversation, apply_length, finish_mask, too_long
from core.masking.messages import validate_messages
from core.masking.prefix_stability import prefix_bound
from core.masking.reasons import MaskError
from core.masking.rendering import is_plain_chat
from core.masking.serving_prompt import prompt_ids
from core.masking.shadow_prompts import ShadowPrompts
from core.masking.token_offsets import TokenOffsets
from core.masking.tokenizer_info import TokenizerInfo
from core.masking.work import Work


@dataclass
class Chunk:
    """One chunk after ``prepare_chunk``: rendered works, and the rejects found so far."""

    size: int
    failed: dict[int, tuple[str, str]]  # index -> (reason, detail): no exception (and traceback) kept
    ready: list[Work]
    stock: list[Work]  # ready works without control-token lookalikes: tokenized as whole renderings


def prepare_chunk(
    info: TokenizerInfo, conversations: list[Any], *, only_last: bool = False, as_rendered: bool = False
) -> Chunk:
    """Validate and render one chunk (no serving prompts and no tokenization yet).

    ``only_last``: only the last assistant turn is checked and masked; ``as_rendered``: turns the
    template rewrites are masked as rendered (see ``encode_batch``).

    For a prefix-stable template (``prefix_bound``) plain chats are rendered through
    ``TracedMessages``, which records where each message's part of the rendering starts.
    """
    failed: dict[int, tuple[str, str]] = {}

    works: list[Work] = []
    for index, conversation in enumerate(conversations):
        try:
            messages = validate_messages(conversation, need_assistant=True)
        except MaskError as err:
            failed[index] = (err.reason, err.detail)
            continue
        turns = [j for j, m in enumerate(messages) if m["role"] == "assistant"]
        if only_last:
            turns = turns[-1:]
        works.append(Work(index, messages, turns, as_rendered=as_rendered, only_last=only_last))

    traced = prefix_bound(info) is not None
    for work in works:
        work.plain = is_plain_chat(work.messages)
    chats: list[list[dict[str, Any]]] = [
        TracedMessages(w.messages) if traced and w.plain else w.messages for w in works
    ]
    full = rendering.render_many(info, chats, False, info.has_generation, all(w.plain for w in works))
    ready: list[Work] = []
    for work, chat, rendered in zip(works, chats, full, strict=True):
        if isinstance(rendered, MaskError):
            failed[work.index] = (rendered.reason, rendered.detail)
            continue
        work.rendered, work.gen_spans = rendered
        if type(chat) is TracedMessages and chat.passes == 1:
            work.positions = chat.positions
        work.lookalike = any(content_has_lookalike(info, m["content"]) for m in work.messages)
        ready.append(work)
    return Chunk(len(conversations), failed, ready, [w for w in ready if not w.lookalike])


@dataclass
class _Job:
    """One conversation in ``complete_chunk``: its tokens, then its serving prompts and checks."""

    work: Work
    ids: list[int] | None = None
    offsets: TokenOffsets | None = None
    content_spans: list[tuple[int, int, int]] | None = None  # lookalike rows: the sentinel rendering's spans
    shadow: Shadow | None = None  # lookalike rows: the sentinel rendering
    control_ends: list[tuple[int, int]] = field(default_factory=list)  # lookalike rows: see segment_encode
    deferred: tuple[str, str] | None = None  # lookalike rows: why the sentinel rendering failed (reported last)
    cut: int | None = None  # overlong="truncate": the character where the kept tokens end
    prompts: ServingPrompts | None = None
    prompt_ids: list[tuple[int, list[int]]] | None = None


def complete_chunk(
    info: TokenizerInfo,
    chunk: Chunk,
    tokenized: list[tuple[list[int], TokenOffsets]],
    max_length: int | None,
    overlong: str,
) -> tuple[list[EncodedConversation | None], list[tuple[int, str, str]]]:
    """The length rule, then the serving prompts, the masks and their checks.

    The length rule comes first, on the tokens of the full rendering, so the per-turn work
    (serving prompts, their tokens) never runs for a conversation that ``quarantine`` rejects
    anyway, and for one that ``truncate`` cuts it stops at the first turn past the cut.
    """
    results: list[EncodedConversation | None] = [None] * chunk.size
    failed = chunk.failed
    jobs = [_Job(work, ids, offsets) for work, (ids, offsets) in zip(chunk.stock, tokenized, strict=True)]
    for work in chunk.ready:
        if not work.lookalike:
            continue
        job = _Job(work)
        try:
            job.shadow = shadow_spans(info, work.messages, work.rendered, False, traced=work.positions is not None)
            job.content_spans = job.shadow.spans
            ids, offsets = segment_encode(info, work.rendered, job.content_spans, job.control_ends)
            job.ids, job.offsets = ids, TokenOffsets.flat(offsets)
        except MaskError as err:
            job.deferred = (err.reason, err.detail)  # reported after the serving checks, which take precedence
        jobs.append(job)

    live: list[_Job] = []
    for job in jobs:
        if job.ids is not None and max_length is not None and len(job.ids) > max_length:
            if overlong == "quarantine":
                err = too_long(len(job.ids), max_length)
                failed[job.work.index] = (err.reason, err.detail)
                continue
            job.cut = job.offsets.end(max_length - 1)  # type: ignore[union-attr]
        live.append(job)

    bound = prefix_bound(info)
    requests: list[tuple[_Job, int]] = []
    for job in live:
        job.prompts = ServingPrompts(info, job.work, bound)
        requests.extend((job, t) for t in job.prompts.eager(whole=job.cut is None))
    plain = all(job.work.plain for job, _ in requests)
    rendered = rendering.render_many(info, [job.work.messages[:t] for job, t in requests], True, False, plain)
    for (job, t), prompt in zip(requests, rendered, strict=True):
        job.prompts.exact[t] = prompt  # type: ignore[union-attr]
    del requests, rendered

    located: list[_Job] = []
    for job in live:
        work = job.work
        try:
            locate_turns(work, job.prompts, job.cut)  # type: ignore[arg-type]
            if job.deferred is not None:
                raise MaskError(*job.deferred)
            if job.content_spans is not None:
                by_message = {j: (a, b) for j, a, b in job.content_spans}
                if [by_message.get(t) for t in work.turns[: len(work.spans)]] != work.spans:
                    raise MaskError(
                        "serving_prefix_mismatch",
                        "assistant content positions from the serving prompts and from the sentinel rendering differ",
                    )
            located.append(job)
        except MaskError as err:
            failed[work.index] = (err.reason, err.detail)
        job.prompts = None  # the exact prompt strings are no longer needed

    if not info.segment_safe:  # position-dependent tokenization: tokenize every checked turn's prompt
        stock = [job for job in located if not job.work.lookalike]
        texts = [job.work.rendered[:start] for job in stock for start, _ in job.work.spans]
        encodings = iter(info.plain.encode_batch(texts, add_special_tokens=False))
        for job in stock:
            job.prompt_ids = [(0, next(encodings).ids) for _ in job.work.spans]

    for job in located:
        work = job.work
        try:
            if work.lookalike:
                derived = ShadowPrompts(info, work, job.shadow, job.control_ends, bound)  # type: ignore[arg-type]
                job.prompt_ids = []
                for k, (t, (start, _)) in enumerate(zip(work.turns, work.spans, strict=False)):
                    got = derived.expected(k, t, start)
                    if got is None:
                        got = (0, prompt_ids(info, work.messages[:t], work.rendered[:start]))
                    job.prompt_ids.append(got)
            ids, mask = finish_mask(info, work, job.ids, job.offsets, job.prompt_ids, job.cut)  # type: ignore[arg-type]
            results[work.index] = apply_length(ids, mask, max_length, overlong)
        except MaskError as err:
            failed[work.index] = (err.reason, err.detail)
    rejects = [(i, *failed[i]) for i in sorted(failed)]
    return results, rejects
