"""The rewrite policy (core.masking.rewrites): what a template that rewrites the conversation
trains on, per policy, and that the shard audits check every policy."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest
from support.masking_fixtures import conversations, tokenizer_for, with_reasoning
from tokenizers import Tokenizer

from core.chat_templates import CHATML_GENERATION
from core.masking import (
    REWRITE_POLICIES,
    encode_batch,
    encode_prompt,
    encode_with_policy,
    verify_masks,
    verify_serving_prefix,
)
from core.tokenize_partition import audit_masks, audit_serving, tokenize_conversations

THINKING = [
    {"role": "user", "content": "a heist movie?"},
    {"role": "assistant", "content": "<think>\nthe user liked heist films\n</think>\n\nWatch the classic heist."},
    {"role": "user", "content": "and a series?"},
    {"role": "assistant", "content": "<think>\nseries now\n</think>\n\nThe space drama."},
]


# The reasoning template with {% generation %} markers: the masks are cross-checked against them too.
MARKED_REASONING = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    + CHATML_GENERATION.replace(
        "{{ message['content'] + '<|im_end|>' }}",
        "{{ (message['content'].split('</think>')[-1].lstrip() if loop.index0 < ns.last_user "
        "else message['content']) + '<|im_end|>' }}",
    )
)


def _clone(template_name: str, chat_template: str):
    """A fresh tokenizer (same vocab as ``template_name``'s) carrying ``chat_template``."""
    tok = tokenizer_for(template_name)
    clone = type(tok)(tokenizer_object=Tokenizer.from_str(tok.backend_tokenizer.to_str()), **tok.special_tokens_map)
    clone.chat_template = chat_template
    return clone


def _masked_text(tok, encoded):
    return tok.decode([i for i, m in zip(encoded.input_ids, encoded.loss_mask, strict=True) if m])


@pytest.mark.parametrize("marked", [False, True])
def test_expand_trains_each_turn_as_written_after_its_serving_prompt(marked):
    tok = _clone("chatml", MARKED_REASONING) if marked else tokenizer_for("reasoning")
    out = encode_with_policy(tok, [THINKING], policy="expand")
    assert out.rejects == []
    assert out.counts == {"kept": 0, "expanded": 1, "expanded_examples": 2, "as_rendered": 0, "quarantined": 0}
    assert [x.target_turn for x in out.examples] == [1, 3]
    for x in out.examples:
        t = x.target_turn
        assert _masked_text(tok, x.encoded) == THINKING[t]["content"] + "<|im_end|>"  # reasoning kept
        first = x.encoded.loss_mask.index(1)
        assert x.encoded.input_ids[:first] == encode_prompt(tok, THINKING[:t])  # the serving prompt, exactly
        ids, mask = x.encoded.input_ids, x.encoded.loss_mask
        assert verify_masks(tok, THINKING, ids, mask, target_turn=t) is None
        assert verify_serving_prefix(tok, THINKING, ids, mask, target_turn=t) is None
    first = out.examples[0].encoded
    assert verify_masks(tok, THINKING, first.input_ids, first.loss_mask) is not None  # one run, not two


@pytest.mark.parametrize("marked", [False, True])
def test_as_rendered_masks_the_earlier_turn_without_its_reasoning(marked):
    tok = _clone("chatml", MARKED_REASONING) if marked else tokenizer_for("reasoning")
    out = encode_with_policy(tok, [THINKING], policy="as_rendered")
    assert out.counts["as_rendered"] == 1 and out.rejects == []
    (x,) = out.examples
    assert x.as_rendered and x.target_turn is None
    assert _masked_text(tok, x.encoded) == (
        "Watch the classic heist.<|im_end|>" + THINKING[3]["content"] + "<|im_end|>"
    )
    ids, mask = x.encoded.input_ids, x.encoded.loss_mask
    assert verify_masks(tok, THINKING, ids, mask, as_rendered=True) is None
    assert verify_serving_prefix(tok, THINKING, ids, mask) is None
    assert verify_masks(tok, THINKING, ids, mask) is not None  # not the turns as written
    shifted = [0, *mask[:-1]]
    assert verify_masks(tok, THINKING, ids, shifted, as_rendered=True) is not None


def test_quarantine_names_the_cause():
    tok = tokenizer_for("reasoning")
    out = encode_with_policy(tok, [THINKING, THINKING[:2]], policy="quarantine")
    assert [x.index for x in out.examples] == [1]
    ((index, reason, detail),) = out.rejects
    assert (index, reason) == (0, "turn_rewritten")
    assert "rewrites an earlier assistant turn once later turns follow" in detail
    assert "message 1" in detail


@pytest.mark.parametrize("policy", REWRITE_POLICIES)
def test_a_template_that_never_rewrites_gives_the_same_rows_under_every_policy(policy):
    tok = tokenizer_for("chatml")
    convs = with_reasoning(conversations(40, seed=3))
    results, rejects = encode_batch(tok, convs)
    out = encode_with_policy(tok, convs, policy=policy)
    assert [(x.index, x.encoded) for x in out.examples] == [(i, e) for i, e in enumerate(results) if e is not None]
    assert out.rejects == rejects
    assert out.counts["kept"] == len(convs) - len(rejects)


def test_other_rejects_are_not_taken_for_rewrites():
    # Text between the generation prompt and the content fails even as the last turn: no policy applies.
    injects = CHATML_GENERATION.replace(
        "{%- generation -%}{{ message['content']", "{%- generation -%}{{ 'Sure! ' + message['content']"
    )
    tok = _clone("chatml", injects)
    for policy in REWRITE_POLICIES:
        out = encode_with_policy(tok, [THINKING], policy=policy)
        assert [r[1] for r in out.rejects] == ["serving_prefix_mismatch"], policy


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="rewrite policy"):
        encode_with_policy(tokenizer_for("reasoning"), [THINKING], policy="keep")  # type: ignore[arg-type]


def _curated(convs):
    return pl.DataFrame(
        {
            "conversation_id": [f"c{k:03d}" for k in range(len(convs))],
            "split": ["train"] * len(convs),
            "messages": convs,
        }
    )


@pytest.mark.parametrize("policy", REWRITE_POLICIES)
def test_shard_rows_and_audits_cover_every_policy(policy):
    tok = tokenizer_for("reasoning")
    convs = with_reasoning(conversations(30, seed=5))
    curated = _curated(convs)
    part = tokenize_conversations(tok, curated, date(2026, 1, 1), max_length=None, rewrite_policy=policy)
    counts = part.counts
    multi = sum(1 for c in convs if sum(m["role"] == "assistant" for m in c) > 1 and "<think>" in str(c[:-1]))
    assert counts["kept"] + counts["expanded"] + counts["as_rendered"] + counts["quarantined"] == len(convs)
    rewritten = {"expand": counts["expanded"], "as_rendered": counts["as_rendered"]}.get(policy, counts["quarantined"])
    assert 0 < rewritten <= multi
    assert part.rows.height == counts["kept"] + counts["as_rendered"] + counts["expanded_examples"]
    assert audit_masks(tok, part.rows, curated).failures == []
    assert audit_serving(tok, part.rows, curated, 0, turns=0).failures == []
    if policy == "expand":
        wrong = part.rows.with_columns(pl.lit(None, dtype=pl.Int32).alias("target_turn"))
        assert audit_masks(tok, wrong, curated).failures  # an expanded row is not the whole conversation
