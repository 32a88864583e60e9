"""Every rewrite policy on a demo day with reasoning added to some assistant turns, per family template:
the same conversations are rewritten whichever the policy, the template that never rewrites is
untouched, and every row passes both shard audits (exact_masks, train_serve_consistency)."""

from __future__ import annotations

import pytest
from support.rewrite_report import demo_day_with_reasoning, policy_counts

pytestmark = pytest.mark.slow


def test_rewrite_policies_on_a_demo_day_with_reasoning():
    curated = demo_day_with_reasoning(120)
    got = {(r["template"], r["policy"]): r for r in policy_counts(curated)}
    assert all(r["audit_failures"] == 0 for r in got.values()), got
    for template in ("chatml", "llama3", "gemma"):  # none strips reasoning: every row kept whole
        for policy in ("expand", "as_rendered", "quarantine"):
            assert got[template, policy]["kept"] == curated.height, (template, policy)
    expand, rendered, quarantine = (got["reasoning", p] for p in ("expand", "as_rendered", "quarantine"))
    rewritten = expand["expanded"]
    assert rewritten > 0
    assert rendered["as_rendered"] == rewritten
    assert quarantine["quarantined"] == rewritten and quarantine["reasons"] == {"turn_rewritten": rewritten}
    assert expand["kept"] == rendered["kept"] == quarantine["kept"] == curated.height - rewritten
    assert expand["rows"] == expand["kept"] + expand["expanded_examples"] > curated.height
