"""The `eval_report` artifact: report.json for machines, report.md and PNG plots for people.

``report.json`` follows DESIGN.md's contract exactly (``checkpoint``;
``splits.<split>.loss|perplexity|loss_tokens`` for validation and test;
``recommendation.<system>`` for model, base_model, popularity and cooccurrence, each with
``n`` and hit@1/5/10, NDCG@10 and MRR of ranking the same candidates, ``ci`` intervals beside
them and ``insufficient`` listing a metric over too few cases, whose value is null, never 0.0;
``champion``; ``promoted``). Extra keys (per-split numbers, paired comparisons, generation
hit@k, per-kind losses, decision, deltas, counts) are added next to them, never in their place;
``validate_report_json`` checks the contract and is what tests and the asset check call.

Plots use matplotlib's object API with the Agg canvas (no pyplot, no global
backend switch), so rendering is safe in a Dagster worker or a test process.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.champion import Decision, promotion_metrics

CONTRACT_SPLITS = ("validation", "test")
CONTRACT_SYSTEMS = ("model", "base_model", "popularity", "cooccurrence")
SPLIT_KEYS = ("loss", "perplexity", "loss_tokens")
RANKING_KEYS = ("hit@1", "hit@5", "hit@10", "ndcg@10", "mrr")
HIT_KEYS = ("hit@1", "hit@5")  # what the plots and the champion comparison show
PREFERENCE_KEYS = ("accuracy", "reward_margin", "likelihood_accuracy")  # evaluation/preference.py
PREFERENCE_HEADLINE_SPLIT = "test"
# Why a held-out row or case was left out of a metric (the ``evaluation`` package's skips): each comes with a detail
# and is counted per code in the result's ``skipped_by_reason``, which report.json keeps (_SYSTEM_KEYS).
EVAL_SKIP_REASONS: dict[str, str] = {
    "null_row": "input_ids or loss_mask is null",
    "length_mismatch": "input_ids and loss_mask have different lengths",
    "token_out_of_vocab": "a token id is negative or not below the model's vocabulary size: the shards were "
    "tokenized for another model",
    "no_assistant_turn": "the recommendation conversation has no assistant turn, so there is no target",
    "no_target_title": "the first assistant turn names no title that matches the catalog",
    "too_little_history": "the held-out member has fewer than two positive watches of catalog titles over the "
    "evaluated days, so there is no history and target to build a recommendation case from",
    "prompt_error": "the chat template could not render the prompt (core.masking.MaskError)",
    "prompt_too_long": "the prompt plus max_new_tokens exceeds the model's max_position_embeddings",
}
# Per-system keys copied into report.json; bulky lists (ranks, samples, per-case results) stay out.
_SYSTEM_KEYS = (*RANKING_KEYS, "n", "ci", "insufficient", "by_split", "skipped_by_reason", "seconds_per_1000")
_GENERATION_KEYS = ("hit@1", "hit@3", "n", "by_split", "no_title_outputs", "mean_titles", "skipped_by_reason")
_SPLIT_EXTRA = ("conversations",)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def build_report_json(
    *,
    checkpoint: str | Path,
    splits: dict[str, dict[str, Any]],
    recommendation: dict[str, dict[str, Any]],
    champion: str | None,
    promoted: bool,
    by_kind: dict[str, dict[str, dict[str, Any]]] | None = None,
    decision: Decision | None = None,
    champion_metrics: dict[str, Any] | None = None,
    base_model_splits: dict[str, dict[str, Any]] | None = None,
    generation: dict[str, dict[str, Any]] | None = None,
    comparisons: dict[str, Any] | None = None,
    cases: dict[str, Any] | None = None,
    eval_set: str | None = None,
    samples: int = 0,
    preference: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report.json object: contract keys first, then extras.

    ``preference`` (held-out pairs, where there are any): ``by_split`` of ``evaluation.preference_report``, plus
    ``reference`` and ``beta``; the test split's values are its headline ``accuracy`` and ``reward_margin``.

    ``splits`` and ``by_kind`` are ``evaluation.evaluate_loss_by``'s; each
    ``recommendation[system]`` is a ranking summary of ``evaluation.run_suite`` (metrics, n,
    ci, insufficient, by_split); ``generation[system]`` an ``evaluate_recommendations`` /
    ``evaluate_popularity`` result (only scalar summaries are kept). Raises ValueError when a
    contract split or system is missing, naming it.
    """
    missing_splits = [s for s in CONTRACT_SPLITS if s not in splits]
    missing_systems = [s for s in CONTRACT_SYSTEMS if s not in recommendation]
    if missing_splits or missing_systems:
        raise ValueError(
            f"eval report needs splits {list(CONTRACT_SPLITS)} and recommendation systems {list(CONTRACT_SYSTEMS)}; "
            f"missing splits {missing_splits}, systems {missing_systems}"
        )

    def split_entry(values: dict[str, Any]) -> dict[str, Any]:
        keys = (*SPLIT_KEYS, *_SPLIT_EXTRA)
        return {k: values.get(k) for k in keys if k in values or k in SPLIT_KEYS}

    report: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "splits": {name: split_entry(values) for name, values in splits.items()},
        "recommendation": {
            name: {k: values.get(k) for k in _SYSTEM_KEYS if k in values or k in RANKING_KEYS}
            for name, values in recommendation.items()
        },
        "champion": champion,
        "promoted": bool(promoted),
    }
    if by_kind is not None:
        report["by_kind"] = {s: {k: split_entry(v) for k, v in kinds.items()} for s, kinds in by_kind.items()}
    if decision is not None:
        report["decision"] = {"promoted": decision.promoted, "reasons": list(decision.reasons)}
        report["deltas"] = dict(decision.deltas)
    if champion_metrics is not None:
        report["champion_metrics"] = dict(champion_metrics)
    if base_model_splits is not None:
        report["base_model_splits"] = {name: split_entry(v) for name, v in base_model_splits.items()}
    if generation is not None:
        report["generation"] = {
            name: {k: values[k] for k in _GENERATION_KEYS if k in values} for name, values in generation.items()
        }
    if comparisons is not None:
        report["comparisons"] = comparisons
    if cases is not None:
        report["cases"] = cases
    if eval_set is not None:
        report["eval_set"] = eval_set
    if preference is not None:
        report["preference"] = preference_entry(**preference)
    report["samples"] = int(samples)
    for key, value in (extra or {}).items():
        if key in report:
            raise ValueError(f"extra key {key!r} would replace a report key; rename it")
        report[key] = value
    return report


def _ranking_problems(where: str, entry: dict[str, Any]) -> list[str]:
    """A system's ranking numbers: n, each metric a number in [0, 1] or null exactly when insufficient, hit@k
    rising with k."""
    problems: list[str] = []
    n = entry.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        problems.append(f"{where}.n: must be an integer >= 0, got {n!r}")
    insufficient = entry.get("insufficient", [])
    if not isinstance(insufficient, list):
        return [*problems, f"{where}.insufficient: must be a list of metric names"]
    for key in RANKING_KEYS:
        if key not in entry:
            problems.append(f"{where}.{key}: missing")
            continue
        value = entry[key]
        if value is None:
            if key not in insufficient:
                problems.append(f"{where}.{key}: null but not marked insufficient (n = {n})")
        elif key in insufficient:
            problems.append(f"{where}.{key}: {value!r} although marked insufficient; an insufficient metric is null")
        elif not _finite(value) or not 0.0 <= value <= 1.0:
            problems.append(f"{where}.{key}: must be a number in [0, 1], got {value!r}")
    hits = [entry.get(k) for k in ("hit@1", "hit@5", "hit@10")]
    if all(_finite(h) for h in hits) and not hits[0] <= hits[1] + 1e-12 <= hits[2] + 2e-12:
        problems.append(f"{where}: hit@1, hit@5, hit@10 = {hits} do not rise with k")
    return problems


def preference_entry(by_split: dict[str, dict[str, Any]], reference: str, beta: float) -> dict[str, Any]:
    """report.json's ``preference``: the headline split's metrics at the top, every split under by_split."""
    head = by_split.get(PREFERENCE_HEADLINE_SPLIT, {})
    return {
        **{k: head.get(k) for k in PREFERENCE_KEYS},
        "n": head.get("n", 0),
        "ci": head.get("ci", {}),
        "insufficient": list(head.get("insufficient", PREFERENCE_KEYS)),
        "by_split": by_split,
        "reference": reference,
        "beta": beta,
    }


def _preference_problems(entry: Any) -> list[str]:
    if not isinstance(entry, dict):
        return ["preference: must be an object"]
    problems = []
    for where, values in [
        ("preference", entry),
        *[(f"preference.by_split.{k}", v) for k, v in entry.get("by_split", {}).items()],
    ]:
        short = set(values.get("insufficient", ()))
        for key in PREFERENCE_KEYS:
            value = values.get(key)
            if (value is None) != (key in short):
                problems.append(f"{where}.{key}: null exactly when listed in insufficient, got {value!r}")
            elif key != "reward_margin" and value is not None and not 0.0 <= value <= 1.0:
                problems.append(f"{where}.{key}: a share must be in [0, 1], got {value!r}")
    return problems


def validate_report_json(obj: Any) -> list[str]:
    """Contract problems of a report.json object (empty list = valid)."""
    if not isinstance(obj, dict):
        return [f"report must be a JSON object, got {type(obj).__name__}"]
    problems: list[str] = []
    if not isinstance(obj.get("checkpoint"), str) or not obj.get("checkpoint"):
        problems.append("checkpoint: must be a non-empty string (the checkpoint path)")
    splits = obj.get("splits")
    if not isinstance(splits, dict):
        problems.append("splits: must be an object")
        splits = {}
    for name in CONTRACT_SPLITS:
        entry = splits.get(name)
        if not isinstance(entry, dict):
            problems.append(f"splits.{name}: missing")
            continue
        for key in SPLIT_KEYS:
            if key not in entry:
                problems.append(f"splits.{name}.{key}: missing")
        tokens, loss, ppl = entry.get("loss_tokens"), entry.get("loss"), entry.get("perplexity")
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            problems.append(f"splits.{name}.loss_tokens: must be an integer >= 0, got {tokens!r}")
            continue
        if loss is None:
            if tokens > 0:
                problems.append(f"splits.{name}.loss: null although loss_tokens = {tokens}")
            if ppl is not None:
                problems.append(f"splits.{name}.perplexity: must be null when loss is null")
            continue
        if not _finite(loss) or loss < 0:
            problems.append(f"splits.{name}.loss: must be a finite number >= 0, got {loss!r}")
            continue
        if tokens == 0:
            problems.append(f"splits.{name}.loss: {loss} although loss_tokens = 0")
        if ppl is not None and (not _finite(ppl) or not math.isclose(ppl, math.exp(loss), rel_tol=1e-6)):
            problems.append(f"splits.{name}.perplexity: {ppl!r} is not exp(loss) = exp({loss})")
        if ppl is None and loss < 700:
            problems.append(f"splits.{name}.perplexity: null although loss {loss} is finite")
    rec = obj.get("recommendation")
    if not isinstance(rec, dict):
        problems.append("recommendation: must be an object")
        rec = {}
    for system in CONTRACT_SYSTEMS:
        entry = rec.get(system)
        if not isinstance(entry, dict):
            problems.append(f"recommendation.{system}: missing")
            continue
        problems += _ranking_problems(f"recommendation.{system}", entry)
    if "champion" not in obj:
        problems.append("champion: missing (a version string or null)")
    elif obj["champion"] is not None and (not isinstance(obj["champion"], str) or not obj["champion"]):
        problems.append(f"champion: must be a version string or null, got {obj['champion']!r}")
    if not isinstance(obj.get("promoted"), bool):
        problems.append(f"promoted: must be true or false, got {obj.get('promoted')!r}")
    if "preference" in obj:
        problems += _preference_problems(obj["preference"])
    try:
        json.dumps(obj, allow_nan=False)
    except (TypeError, ValueError) as exc:
        problems.append(f"report is not strict JSON: {exc}")
    return problems


# --------------------------------------------------------------------------------------
# Markdown


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def _delta(a: Any, b: Any, digits: int = 4) -> str:
    if not _finite(a) or not _finite(b):
        return "—"
    return f"{a - b:+.{digits}f}"


def _fence(text: str) -> str:
    """A code block whose fence is longer than any backtick run inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _champion_numbers(champion_report: dict[str, Any] | None, report: dict[str, Any]) -> dict[str, Any] | None:
    """Flat champion metrics from a champion report.json, flat metrics, or the report's own copy."""
    source = champion_report if champion_report is not None else report.get("champion_metrics")
    if source is None:
        return None
    return promotion_metrics(source) if "splits" in source else dict(source)


def _counts(by_reason: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n:,}" for reason, n in by_reason.items()) or "none"


def _estimate_cell(entry: dict[str, Any], key: str) -> str:
    if key in entry.get("insufficient", []):
        return "insufficient"
    low, high = (entry.get("ci") or {}).get(key, [None, None])
    interval = f" [{low:.3f}, {high:.3f}]" if _finite(low) and _finite(high) else ""
    return f"{_fmt(entry.get(key), 3)}{interval}"


def _verdict(difference: dict[str, Any]) -> str:
    if difference.get("insufficient"):
        return "insufficient"
    low, high = difference.get("ci", [None, None])
    value = f"{difference.get('difference'):+.3f} [{low:+.3f}, {high:+.3f}]" if _finite(low) else "—"
    if difference.get("beats"):
        return f"{value} **beats**"
    return f"{value} worse" if _finite(high) and high < 0 else f"{value} no clear difference"


def _ranking_markdown(report: dict[str, Any]) -> list[str]:
    """Ranking metrics per split with intervals, then the model's paired differences with each baseline."""
    lines = ["", "## Recommendation: ranking the next title watched", ""]
    cases = report.get("cases") or {}
    if cases:
        cand = cases.get("candidates", {})
        which = (
            "the whole catalog"
            if cand.get("whole_catalog")
            else f"the target and {cand.get('size', 0) - 1} negatives drawn by {cand.get('negatives')} (the same "
            "for every system)"
        )
        lines.append(
            f"{_fmt(cases.get('n'))} held-out cases ({cases.get('construction', '')}); each system ranks {which} "
            f"out of {_fmt(cand.get('catalog_titles'))} titles. Intervals: 95% bootstrap over cases; a metric over "
            f"fewer than {cases.get('min_cases')} cases is insufficient. Held-out members without a case: "
            f"{_counts(cases.get('skipped_by_reason') or {})}."
        )
    metrics = ("hit@1", "hit@5", "hit@10", "ndcg@10", "mrr")
    splits = sorted({s for e in report["recommendation"].values() for s in e.get("by_split", {})}, reverse=True)
    for split in splits:
        lines += ["", f"### {split}", "", "| system | " + " | ".join(metrics) + " | n |"]
        lines.append("|---|" + "---:|" * (len(metrics) + 1))
        for name, entry in report["recommendation"].items():
            e = entry.get("by_split", {}).get(split)
            if e is None:
                continue
            cells = " | ".join(_estimate_cell(e, k) for k in metrics)
            lines.append(f"| {_cell(name)} | {cells} | {_fmt(e.get('n'))} |")
    comparisons = report.get("comparisons") or {}
    if comparisons:
        lines += ["", "### Model minus baseline, paired over the same cases (95% interval)", ""]
        lines += ["| split | baseline | hit@5 | ndcg@10 | mrr |", "|---|---|---|---|---|"]
        for split, by_baseline in sorted(comparisons.items(), reverse=True):
            for baseline, diff in by_baseline.items():
                cells = " | ".join(_verdict(diff.get(k, {})) for k in ("hit@5", "ndcg@10", "mrr"))
                lines.append(f"| {_cell(split)} | {_cell(baseline)} | {cells} |")
    return lines


def _generation_markdown(report: dict[str, Any]) -> list[str]:
    generation = report.get("generation") or {}
    if not generation:
        return []
    lines = ["", "## Recommendation: titles named in generated answers", ""]
    lines += ["| system | hit@1 | hit@3 | cases | mean titles named |", "|---|---:|---:|---:|---:|"]
    for name, entry in generation.items():
        lines.append(
            f"| {_cell(name)} | {_fmt(entry.get('hit@1'), 3)} | {_fmt(entry.get('hit@3'), 3)} | "
            f"{_fmt(entry.get('n'))} | {_fmt(entry.get('mean_titles'), 2)} |"
        )
    lines += [
        "",
        "The model and base model answer each prompt greedily; the titles they name are matched to the catalog, and "
        "k goes no higher than the titles an answer names. Popularity names the most watched titles not yet seen.",
    ]
    return lines


def _preference_markdown(report: dict[str, Any]) -> list[str]:
    pref = report.get("preference")
    if not pref:
        return []
    lines = ["", "## Preference pairs (held out)", ""]
    lines.append(
        f"Implicit reward margin beta * ((model - reference) chosen - (model - reference) rejected) with beta "
        f"{pref.get('beta')} and the reference `{pref.get('reference')}`; accuracy = share of pairs with a margin "
        "above 0; likelihood accuracy = share where the model alone gives the chosen answer the higher "
        "log-probability. 95% bootstrap intervals over pairs."
    )
    lines += ["", "| split | accuracy | reward margin | likelihood accuracy | n |", "|---|---|---|---|---:|"]
    for split, entry in pref.get("by_split", {}).items():
        cells = [_estimate_cell(entry, key) for key in PREFERENCE_KEYS]
        lines.append(f"| {_cell(split)} | {' | '.join(cells)} | {entry.get('n', 0)} |")
    return lines


def render_markdown(
    report: dict[str, Any],
    *,
    champion_report: dict[str, Any] | None = None,
    samples: Sequence[dict[str, Any]] = (),
    plots: Sequence[str] = (),
) -> str:
    """report.md: summary, per-kind losses, systems, champion comparison and decision, samples."""
    lines = ["# Eval report", ""]
    lines.append(f"- checkpoint: `{report['checkpoint']}`")
    lines.append(
        f"- champion compared against: `{report['champion']}`" if report["champion"] else "- champion: none yet"
    )
    lines.append(f"- **promoted: {'yes' if report['promoted'] else 'no'}**")
    if report.get("eval_set"):
        lines.append(f"- held-out data fingerprint: `{report['eval_set']}`")
    lines += ["", "## Held-out loss (assistant tokens only)", ""]
    lines += ["| split | loss | perplexity | loss tokens | conversations |", "|---|---:|---:|---:|---:|"]
    for name, entry in report["splits"].items():
        lines.append(
            f"| {_cell(name)} | {_fmt(entry.get('loss'))} | {_fmt(entry.get('perplexity'), 2)} | "
            f"{_fmt(entry.get('loss_tokens'))} | {_fmt(entry.get('conversations'))} |"
        )
    base = report.get("base_model_splits")
    if base:
        lines += ["", "Base model on the same data:", ""]
        lines += ["| split | loss | perplexity |", "|---|---:|---:|"]
        for name, entry in base.items():
            lines.append(f"| {_cell(name)} | {_fmt(entry.get('loss'))} | {_fmt(entry.get('perplexity'), 2)} |")
    if report.get("by_kind"):
        lines += ["", "## Loss by conversation kind", ""]
        lines += ["| split | kind | loss | perplexity | loss tokens | conversations |", "|---|---|---:|---:|---:|---:|"]
        for split, kinds in report["by_kind"].items():
            for kind, entry in kinds.items():
                lines.append(
                    f"| {_cell(split)} | {_cell(kind)} | {_fmt(entry.get('loss'))} | "
                    f"{_fmt(entry.get('perplexity'), 2)} | {_fmt(entry.get('loss_tokens'))} | "
                    f"{_fmt(entry.get('conversations'))} |"
                )
    lines += _ranking_markdown(report)
    lines += _generation_markdown(report)
    lines += _preference_markdown(report)
    lines += ["", "## Versus champion", ""]
    champ = _champion_numbers(champion_report, report)
    cand = promotion_metrics(report)
    if champ is None:
        lines.append("No champion yet: this is the first evaluated checkpoint.")
    else:
        lines += ["| metric | candidate | champion | delta |", "|---|---:|---:|---:|"]
        keys = [("validation_loss", 4), ("test_loss", 4), ("hit@1", 3), ("hit@5", 3)]
        if "preference_likelihood_accuracy" in cand or "preference_likelihood_accuracy" in champ:
            keys.append(("preference_likelihood_accuracy", 3))
        for key, digits in keys:
            a, b = cand.get(key), champ.get(key)
            label = f"{key} (validation ranking)" if key.startswith("hit@") else key
            lines.append(f"| {label} | {_fmt(a, digits)} | {_fmt(b, digits)} | {_delta(a, b, digits)} |")
    decision = report.get("decision")
    lines += ["", f"**Decision: {'promoted' if report['promoted'] else 'not promoted'}.**"]
    if decision:
        lines += [""] + [f"- {reason}" for reason in decision.get("reasons", [])]
    if samples:
        lines += ["", "## Generation samples", ""]
        for k, sample in enumerate(samples, 1):
            hit = sample.get("hit@1")
            lines.append(
                f"### {k}. `{sample.get('conversation_id', '?')}` — target {sample.get('target', '?')}"
                + (f" — hit@1 {'✓' if hit else '✗'}" if hit is not None else "")
            )
            if sample.get("recommended") is not None:
                lines.append(f"\nParsed recommendations: {', '.join(map(str, sample['recommended'])) or '(none)'}")
            lines += ["", "Prompt:", "", _fence(str(sample.get("prompt", ""))), ""]
            lines += ["Generated:", "", _fence(str(sample.get("generated", ""))), ""]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------------------
# Plots


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_loss_curve(path: Path, loss_curve: Sequence[dict[str, Any]]) -> Path:
    """Training loss (and learning rate, when recorded) against the optimizer step."""
    points = [p for p in loss_curve if _finite(p.get("step")) and _finite(p.get("loss"))]
    fig = _figure(7, 4)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([p["step"] for p in points], [p["loss"] for p in points], color="tab:blue", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("mean loss per assistant token")
    ax.grid(alpha=0.3)
    lrs = [(p["step"], p["lr"]) for p in points if _finite(p.get("lr"))]
    if lrs:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in lrs], [lr for _, lr in lrs], color="tab:orange", alpha=0.6, label="lr")
        ax2.set_ylabel("learning rate")
    ax.set_title("Training loss")
    fig.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_metrics(path: Path, report: dict[str, Any], champion: dict[str, Any] | None) -> Path:
    """Bars: validation loss, and ranking hit@1 and hit@5 on the validation cases, of the candidate vs the
    champion vs the baselines."""
    cand = promotion_metrics(report)
    rec = {name: e.get("by_split", {}).get("validation", e) for name, e in report["recommendation"].items()}
    base_loss = (report.get("base_model_splits") or {}).get("validation", {}).get("loss")
    panels = [
        (
            "validation loss",
            [
                ("candidate", cand.get("validation_loss")),
                ("champion", (champion or {}).get("validation_loss")),
                ("base model", base_loss),
            ],
        ),
    ]
    for key in HIT_KEYS:
        panels.append(
            (
                key,
                [
                    ("candidate", rec["model"].get(key)),
                    ("champion", (champion or {}).get(key)),
                    ("base model", rec["base_model"].get(key)),
                    ("popularity", rec["popularity"].get(key)),
                    ("co-occurrence", rec.get("cooccurrence", {}).get(key)),
                ],
            )
        )
    colors = {
        "candidate": "tab:blue",
        "champion": "tab:green",
        "base model": "tab:gray",
        "popularity": "tab:orange",
        "co-occurrence": "tab:purple",
    }
    fig = _figure(11, 3.8)
    for k, (title, bars) in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), k)
        shown = [(name, float(v)) for name, v in bars if _finite(v)]
        xs = list(range(len(shown)))
        ax.bar(xs, [v for _, v in shown], color=[colors[n] for n, _ in shown])
        ax.set_xticks(xs, [n for n, _ in shown], rotation=20)
        for x, (_, v) in zip(xs, shown, strict=True):
            ax.annotate(f"{v:.3f}", (x, v), ha="center", va="bottom", fontsize=8)
        ax.set_title(title)
        if title.startswith("hit"):
            ax.set_ylim(0, max([1e-3, *[v * 1.2 for _, v in shown]]))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Candidate vs champion vs baselines")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


# --------------------------------------------------------------------------------------
# Writing


def write_report(
    out_dir: Path,
    report: dict[str, Any],
    *,
    loss_curve: Sequence[dict[str, Any]] | None = None,
    champion_report: dict[str, Any] | None = None,
    samples: Sequence[dict[str, Any]] = (),
) -> list[Path]:
    """Write report.json, report.md, samples.json and the PNG plots into ``out_dir``; returns the files.

    Refuses (ValueError listing the problems) a report that breaks the contract, so a
    broken report.json never reaches a consumer. ``out_dir`` is normally the temporary
    directory of ``core.atomic_io.atomic_directory``.
    """
    problems = validate_report_json(report)
    if problems:
        raise ValueError("eval report breaks the DESIGN.md contract: " + "; ".join(problems))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    path = out_dir / "report.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    written.append(path)
    plots: list[Path] = []
    if loss_curve:
        plots.append(plot_loss_curve(out_dir / "loss_curve.png", loss_curve))
    plots.append(plot_metrics(out_dir / "metrics_vs_champion.png", report, _champion_numbers(champion_report, report)))
    if samples:
        path = out_dir / "samples.json"
        path.write_text(json.dumps(list(samples), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    path = out_dir / "report.md"
    markdown = render_markdown(report, champion_report=champion_report, samples=samples, plots=[p.name for p in plots])
    path.write_text(markdown, encoding="utf-8")
    written.append(path)
    return written + plots
