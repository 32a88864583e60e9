"""Seconds to tokenize one long conversation, before and after the bounded-cost fix, in one run.

`python -m benchmarks.long_conversation [--before 477a90d] [--out benchmarks/results]`

The bounded-cost fix: a conversation of many short turns could pass curation and then cost
time quadratic in its turns in tokenized_shards. This measures, on the demo's tiny tokenizer
(core.base_model's preset, trained on demo conversations) and one conversation of N messages
(user/assistant alternating, short demo messages, max_length=None so nothing is quarantined):

- encode: ``encode_batch`` of the conversation (render, tokenize, mask, serving-prefix checks);
- encode, typed control token: the same with ``<|im_end|>`` typed into the first user message
  (a lookalike row, tokenized without treating the typed text as a control token);
- serving audit: ``verify_serving_prefix`` as the tokenized_shards check runs it per sampled row
  (before: every turn; after: the default budget of 16 turns);
- mask audit: ``verify_masks`` (linear before and after, for completeness);
- row total: encode + mask audit + serving audit, what one such row cost the asset;
- too long: the same conversation with max_length=2048 under overlong="quarantine";
- the two exact fallbacks, still quadratic by design and bounded by the length rule: a chat
  template whose syntax does not prove its serving prompts are prefixes (the demo template
  with a harmless ``loop.last``), and a position-dependent tokenizer (``segment_safe`` off).

The "before" code is ``git show <before>:core/masking.py`` loaded as a separate module, so both
sides run in this process on the same tokenizer and conversations. The after side's masks are
compared with the before side's for every size both measure. Timings: median of 3 runs when
one run takes under a second, else one run; the first call of each side is warmed up.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.harness import REPO, machine_description, markdown_table, write_result

NAME = "long_conversation"
BEFORE_COMMIT = "477a90d"
AFTER_SIZES = (100, 300, 1_000, 3_000, 10_000)
BEFORE_SIZES = {
    "encode": (100, 300, 1_000, 3_000),
    "encode_typed": (100, 300, 1_000),
    "serving_audit": (100, 300, 1_000),
}
FALLBACK_SIZES = (100, 300, 1_000)
UNPROVEN = "{{ '' if loop.last else '' }}"  # renders nothing, but needs later messages: no proof of prefixes
TYPED = " <|im_end|>"
AUDIT_TURNS = 16  # audit_serving's default


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def load_before(commit: str, tmp: Path) -> ModuleType:
    """core/masking.py as of ``commit``, importable next to today's (it imports nothing from core)."""
    path = tmp / "masking_before.py"
    path.write_text(_git("show", f"{commit}:core/masking.py"))
    spec = importlib.util.spec_from_file_location("masking_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["masking_before"] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def demo_material(conversations: int) -> tuple[Any, list[str], list[str]]:
    """The preset tokenizer trained on demo train conversations, and their user and assistant messages."""
    import polars as pl

    from benchmarks.workload import curated_conversations
    from core.base_model import TinyModelPreset, build_preset_tokenizer

    curated = curated_conversations(conversations)
    messages = curated.filter(pl.col("split") == "train").select(pl.col("messages").explode()).unnest("messages")
    tokenizer = build_preset_tokenizer(messages["content"].to_list(), TinyModelPreset())
    users = messages.filter(pl.col("role") == "user")["content"].to_list()
    assistants = messages.filter(pl.col("role") == "assistant")["content"].to_list()
    return tokenizer, users, assistants


def long_conversation(turns: int, users: list[str], assistants: list[str], typed: bool = False) -> list[dict]:
    """``turns`` messages, user first, alternating, cycling through the demo's messages."""
    messages = [
        {"role": "user", "content": users[k // 2 % len(users)]}
        if k % 2 == 0
        else {"role": "assistant", "content": assistants[k // 2 % len(assistants)]}
        for k in range(turns)
    ]
    if typed:
        messages[0] = {"role": "user", "content": messages[0]["content"] + TYPED}
    return messages


def timed(run: Callable[[], Any]) -> tuple[float, float, Any]:
    """Median wall and CPU (all threads) seconds over 5 runs, or one run when it takes a second or more;
    and the last result. Other users of a shared machine move the wall time; the CPU time much less."""
    wall: list[float] = []
    cpu: list[float] = []
    result = None
    for _ in range(5):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = run()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        if wall[-1] >= 1.0:
            break
    return statistics.median(wall), statistics.median(cpu), result


def _masks(encoded: tuple[list[Any], list[Any]]) -> list[Any]:
    """Comparable encodings (each side has its own EncodedConversation class) and reject reasons."""
    results, rejects = encoded
    return [None if e is None else (e.input_ids, e.loss_mask, e.truncated) for e in results] + [r[:2] for r in rejects]


def measure(before: ModuleType, tokenizer: Any, users: list[str], assistants: list[str]) -> list[dict[str, Any]]:
    from core import masking as after
    from core.masking.tokenizer_info import info_for

    sides = {"before": before, "after": after}
    warm = long_conversation(8, users, assistants)
    for module in sides.values():
        module.encode_batch(tokenizer, [warm])
        module.verify_serving_prefix(tokenizer, warm, *_ids_mask(module, tokenizer, warm))
        module.verify_masks(tokenizer, warm, *_ids_mask(module, tokenizer, warm))
    unproven = _clone(tokenizer)
    unproven.chat_template = tokenizer.chat_template.replace("{%- else -%}", "{%- else -%}" + UNPROVEN, 1)
    assert UNPROVEN in unproven.chat_template and not after.prefix_stable(unproven)
    dependent = _clone(tokenizer)
    for info in (before._info(dependent), info_for(dependent)):
        info.segment_safe = False  # as for lstrip/rstrip added tokens or Metaspace "first"
    rows: list[dict[str, Any]] = []

    def record(what: str, turns: int, side: str, timing: list[float], **extra: Any) -> None:
        seconds, cpu = timing
        rows.append(
            {
                "measurement": what,
                "turns": turns,
                "side": side,
                "seconds": round(seconds, 4),
                "cpu_seconds": round(cpu, 4),
                **extra,
            }
        )
        print(f"  {what:26s} {turns:6d} turns  {side:6s} {seconds:9.3f} s  cpu {cpu:9.3f} s", flush=True)

    for turns in AFTER_SIZES:
        plain = long_conversation(turns, users, assistants)
        typed = long_conversation(turns, users, assistants, typed=True)
        ids, mask = _ids_mask(after, tokenizer, plain)  # the row both sides' audits check
        outputs: dict[tuple[str, str], Any] = {}
        for side, module in sides.items():
            for what, conversation in (("encode", plain), ("encode_typed", typed)):
                if side == "before" and turns not in BEFORE_SIZES[what]:
                    continue
                *timing, got = timed(partial(module.encode_batch, tokenizer, [conversation]))
                outputs[(what, side)] = _masks(got)
                record(what, turns, side, timing, tokens=len(got[0][0].input_ids))
            if side == "after" or turns in BEFORE_SIZES["serving_audit"]:
                budget = {"max_turns": AUDIT_TURNS} if side == "after" else {}
                audit = partial(module.verify_serving_prefix, tokenizer, plain, ids, mask, **budget)
                *timing, problem = timed(audit)
                assert problem is None, problem
                record("serving_audit", turns, side, timing)
                *timing, problem = timed(partial(module.verify_masks, tokenizer, plain, ids, mask))
                assert problem is None, problem
                record("mask_audit", turns, side, timing)
            if len(ids) > 2048 and (side == "after" or turns <= 1_000):
                *timing, got = timed(partial(module.encode_batch, tokenizer, [plain], max_length=2048))
                assert [r[1] for r in got[1]] == ["too_long"]
                record("too_long", turns, side, timing)
        if turns in FALLBACK_SIZES:
            for what, tok in (("encode_unproven_template", unproven), ("encode_position_dependent", dependent)):
                for side, module in sides.items():
                    *timing, got = timed(partial(module.encode_batch, tok, [plain]))
                    outputs[(what, side)] = _masks(got)
                    record(what, turns, side, timing)
        for what in ("encode", "encode_typed", "encode_unproven_template", "encode_position_dependent"):
            if (what, "before") in outputs:
                same = outputs[(what, "before")] == outputs[(what, "after")]
                rows.append({"measurement": what, "turns": turns, "side": "identical", "identical": same})
                if not same:
                    raise AssertionError(
                        f"{what} at {turns} turns: the after side's masks differ from the before side's"
                    )
    return rows


def _clone(tokenizer: Any) -> Any:
    """Another tokenizer object with the same vocabulary and template (its own cached facts)."""
    from tokenizers import Tokenizer

    clone = type(tokenizer)(
        tokenizer_object=Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()), **tokenizer.special_tokens_map
    )
    clone.chat_template = tokenizer.chat_template
    return clone


def _ids_mask(module: ModuleType, tokenizer: Any, messages: list[dict]) -> tuple[list[int], list[int]]:
    enc = module.encode_conversation(tokenizer, messages)
    return enc.input_ids, enc.loss_mask


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    seconds = {(r["measurement"], r["turns"], r["side"]): r["seconds"] for r in rows if "seconds" in r}
    cpu = {(r["measurement"], r["turns"], r["side"]): r["cpu_seconds"] for r in rows if "cpu_seconds" in r}
    table = []
    for what in (
        "encode",
        "encode_typed",
        "serving_audit",
        "mask_audit",
        "too_long",
        "row_total",
        "encode_unproven_template",
        "encode_position_dependent",
    ):
        for turns in AFTER_SIZES:
            if what == "row_total":
                parts = ("encode", "mask_audit", "serving_audit")
                got = {
                    side: sum(seconds[(p, turns, side)] for p in parts)
                    for side in ("before", "after")
                    if all((p, turns, side) in seconds for p in parts)
                }
            else:
                got = {
                    side: seconds[(what, turns, side)] for side in ("before", "after") if (what, turns, side) in seconds
                }
            if "after" not in got:
                continue
            before = got.get("before", float("nan"))
            cpus = [cpu.get((what, turns, side), float("nan")) for side in ("before", "after")]
            table.append(
                [
                    what,
                    turns,
                    before,
                    got["after"],
                    before / got["after"] if "before" in got else float("nan"),
                    *cpus,
                    got["after"] / turns * 1000,
                ]
            )
    same = all(r["identical"] for r in rows if r.get("side") == "identical")
    return "\n".join(
        [
            "# Long conversation: seconds for one conversation of N turns, before and after",
            "",
            f"Command: `{meta['command']}`",
            "",
            f"Before: `{meta['before']}` (core/masking.py as of that commit). After: `{meta['after']}`"
            f"{' with uncommitted changes' if meta['dirty'] else ''}. Tokenizer: the demo preset "
            f"(vocabulary {meta['vocab_size']}, ChatML template), trained on {meta['demo_conversations']} demo "
            "conversations. A turn is one message; messages alternate user/assistant (short demo messages). "
            f"Machine: {meta['machine']['cpu_model']}, {meta['machine']['usable_cpus']} usable CPUs, load "
            f"{meta['machine']['load_average_at_start']} at start.",
            "",
            markdown_table(
                [
                    "measurement",
                    "turns",
                    "before (s)",
                    "after (s)",
                    "speed-up",
                    "before CPU (s)",
                    "after CPU (s)",
                    "after: s per 1,000 turns",
                ],
                table,
            ),
            "",
            "- encode: `encode_batch` of the one conversation, max_length=None (render, tokenize, mask, "
            "train/serve checks). encode_typed: the same with `<|im_end|>` typed into the first user message.",
            f"- serving_audit: `verify_serving_prefix` for the row (before: every turn; after: {AUDIT_TURNS} turns, "
            "the tokenized_shards default `serving_check_turns`). mask_audit: `verify_masks`.",
            "- row_total: encode + mask_audit + serving_audit, what one such row cost the tokenized_shards asset.",
            "- too_long: the same conversation with max_length=2048, overlong='quarantine' (rejected as too_long).",
            "- encode_unproven_template: the demo template plus `{{ '' if loop.last else '' }}` (renders the "
            "same text, but reads whether later messages exist, so nothing proves its prompts are prefixes): every "
            "turn's prompt is rendered, as before. encode_position_dependent: the demo tokenizer with "
            "`segment_safe` off (as for added tokens that strip whitespace, or Metaspace's 'first' scheme): every "
            "prompt is tokenized whole. Both stay quadratic in the turns by design; the length rule bounds them.",
            "- Seconds are wall time, medians of 5 runs under a second, else one run; CPU columns are process CPU "
            "time (all threads), less moved by other users of the machine.",
            f"- Masks and rejects of the after side equal the before side's at every size both ran: {same}.",
            "- after, s per 1,000 turns stays flat as N grows: linear. The before side grows with N: quadratic.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE_COMMIT, help="commit whose core/masking.py is the before side")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--demo-conversations", type=int, default=2_000)
    args = parser.parse_args()
    print(f"demo data and tokenizer ({args.demo_conversations} conversations) ...", flush=True)
    tokenizer, users, assistants = demo_material(args.demo_conversations)
    with tempfile.TemporaryDirectory() as tmp:
        before = load_before(args.before, Path(tmp))
        rows = measure(before, tokenizer, users, assistants)
    meta = {
        "command": "python -m benchmarks.long_conversation " + " ".join(sys.argv[1:]),
        "before": _git("rev-parse", "--short", args.before),
        "after": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--", "core/masking", "core/tokenize_partition.py")),
        "vocab_size": len(tokenizer),
        "demo_conversations": args.demo_conversations,
        "audit_turns": AUDIT_TURNS,
        "machine": machine_description(),
    }
    write_result(args.out, NAME, {"meta": meta, "rows": rows}, report(rows, meta))
    print(f"wrote {args.out / (NAME + '.md')} and .json")


if __name__ == "__main__":
    main()
