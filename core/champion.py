"""The champion registry: which checkpoint is the current best, and why.

Append-only and immutable, like every artifact: each promotion is one JSON record
``<registry>/<version>.json`` written atomically and never overwritten, so the
history of champions is the directory listing and a reader can never see half a
record. A corrupt or foreign file is reported and skipped, never fatal (a bad write must
not block every later eval).

Promotion is a compare-and-swap (``promote``): a record names the champion it
replaced (``previous``), and it is committed by creating the claim
``<registry>/.successors/<previous>`` only if that name is free (``link()`` in a
directory, atomic on local filesystems and on NFS; a conditional write on an object
store; core/champion_storage.py), across processes and hosts, with no lock to go stale.
Each champion can therefore be replaced once; a candidate that
was compared with a champion someone else already replaced gets ``ChampionChanged``
and is compared again with the new one (``promote_if_better``, bounded attempts).
The claim holds the whole record, so a crash after it leaves a complete record.
The current champion is the newest record (by ``promoted_at``) that no claim
replaced, which is also the answer for registries written before claims existed.

Promotion rule (``decide_promotion``): a candidate is promoted unless it is worse
than the champion by more than a margin on validation loss (relative margin) or on
the model's ranking hit@5 on the validation cases (absolute margin); a hit@5 over too
few cases is insufficient and not decided on. The first checkpoint is promoted.
Both sides must be measured on the same held-out data for the comparison to mean
anything; the records carry an ``eval_set`` fingerprint so a mismatch is reported.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.atomic_io import new_version_id
from core.champion_storage import DirectoryRegistry, RegistryStorage, registry_storage

RECORD_FORMAT = 1
SUCCESSORS = ".successors"  # <registry>/.successors/<replaced version>: the commit point of a promotion
FIRST = "_first"  # the claim of the first champion (no version starts with "_")
MAX_PROMOTION_ATTEMPTS = 3
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

# The metrics promotion looks at, extracted from an eval report by ``promotion_metrics``.
LOSS_KEY = "validation_loss"
HIT_KEY = "hit@5"
PREFERENCE_KEY = "preference_likelihood_accuracy"  # validation pairs; compared when both sides have enough pairs


@dataclass(frozen=True)
class ChampionRecord:
    """One promotion: the checkpoint that became champion and the evidence for it."""

    version: str  # record name; usually the eval_report version that promoted it
    checkpoint: str  # path of the trained_checkpoint version directory
    eval_version: str  # eval_report version holding the full report
    metrics: dict[str, Any]  # at least validation_loss and hit@5 (see promotion_metrics)
    promoted_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    reasons: tuple[str, ...] = ()
    previous: str | None = None  # version of the champion it replaced
    format: int = RECORD_FORMAT

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        return out

    @classmethod
    def from_json(cls, obj: Any) -> ChampionRecord:
        if not isinstance(obj, dict):
            raise ValueError(f"a champion record is a JSON object, got {type(obj).__name__}")
        missing = [k for k in ("version", "checkpoint", "eval_version", "metrics", "promoted_at") if k not in obj]
        if missing:
            raise ValueError(f"champion record lacks {missing}")
        if obj.get("format", RECORD_FORMAT) != RECORD_FORMAT:
            raise ValueError(f"champion record format {obj.get('format')} is not {RECORD_FORMAT}")
        if not isinstance(obj["metrics"], dict):
            raise ValueError("champion record 'metrics' is not an object")
        for key in ("version", "checkpoint", "eval_version", "promoted_at"):
            if not isinstance(obj[key], str) or not obj[key]:
                raise ValueError(f"champion record {key!r} is not a non-empty string")
        return cls(
            version=obj["version"],
            checkpoint=obj["checkpoint"],
            eval_version=obj["eval_version"],
            metrics=dict(obj["metrics"]),
            promoted_at=obj["promoted_at"],
            reasons=tuple(str(r) for r in obj.get("reasons", ())),
            previous=obj.get("previous"),
        )


@dataclass(frozen=True)
class RegistryProblem:
    """A file in the registry directory that is not a valid record (kept, never deleted)."""

    path: str
    detail: str


class ChampionChanged(RuntimeError):
    """The champion a record was compared with is no longer the champion (someone promoted in between)."""

    def __init__(self, expected: str | None, current: ChampionRecord | None) -> None:
        self.expected = expected
        self.current = current
        now = current.version if current else "none"
        super().__init__(
            f"champion is now {now}, not {expected or 'none'} as this promotion assumed; compare with {now} again"
        )


class PromotionConflict(RuntimeError):
    """The champion kept changing while a candidate was being compared; the caller should evaluate again later."""


def _parse_record(data: bytes) -> ChampionRecord:
    return ChampionRecord.from_json(json.loads(data.decode("utf-8")))


def _claim_name(previous: str | None) -> str:
    return previous or FIRST


Registry = Path | str | RegistryStorage  # a directory, an s3:// URL, or a storage object


def _registry_state(registry: Registry) -> tuple[list[ChampionRecord], list[RegistryProblem], set[str]]:
    """Valid records (oldest first), problems, and the names of the champions already replaced (claimed)."""
    storage = registry_storage(registry)
    by_version: dict[str, ChampionRecord] = {}
    problems: list[RegistryProblem] = []
    claimed: set[str] = set()
    # Claims first: a claim is the committed record, even when a crash kept its <version>.json from appearing.
    for name in storage.names(SUCCESSORS):
        where = storage.where(f"{SUCCESSORS}/{name}")
        claimed.add(name)
        try:
            record = _parse_record(storage.read(f"{SUCCESSORS}/{name}"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            problems.append(RegistryProblem(where, f"unreadable successor claim: {exc}"))
            continue
        if _claim_name(record.previous) != name:
            problems.append(RegistryProblem(where, f"claim names {name!r} but the record replaced {record.previous!r}"))
            continue
        by_version[record.version] = record
    for name in storage.names():
        if not name.endswith(".json"):
            continue
        where = storage.where(name)
        try:
            record = _parse_record(storage.read(name))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            problems.append(RegistryProblem(where, f"unreadable champion record: {exc}"))
            continue
        if f"{record.version}.json" != name:
            problems.append(RegistryProblem(where, f"record says version {record.version!r} but the file is {name}"))
            continue
        known = by_version.setdefault(record.version, record)
        if known != record:
            problems.append(RegistryProblem(where, f"differs from the committed claim of {record.version}"))
    records = sorted(by_version.values(), key=lambda r: (r.promoted_at, r.version))
    return records, problems, claimed


def read_champions(registry: Registry) -> tuple[list[ChampionRecord], list[RegistryProblem]]:
    """Every valid record, oldest first (by promoted_at, then version), and the files that are not valid."""
    records, problems, _ = _registry_state(registry)
    return records, problems


def _current(records: list[ChampionRecord], claimed: set[str]) -> ChampionRecord | None:
    live = [r for r in records if r.version not in claimed]
    return live[-1] if live else None


def current_champion(registry: Registry) -> ChampionRecord | None:
    """The champion now: the newest valid record not replaced by a later one (None before the first promotion)."""
    records, _, claimed = _registry_state(registry)
    return _current(records, claimed)


def promote(registry: Registry, record: ChampionRecord) -> Path | str:
    """Make ``record`` the champion if ``record.previous`` still is; returns where ``<version>.json`` is (a
    Path in a directory registry, a URL on an object store).

    Raises ChampionChanged when the champion is no longer ``record.previous`` (compare again with
    ``exc.current``), FileExistsError when the version exists (records are immutable).
    """
    if not _VERSION_RE.match(record.version):
        raise ValueError(
            f"champion version {record.version!r} must be 1-200 characters of letters, digits, '.', '_' or '-' "
            "(it becomes a file name)"
        )
    if record.previous is not None and not _VERSION_RE.match(record.previous):
        raise ValueError(f"champion record previous={record.previous!r} is not a champion version")
    storage = registry_storage(registry)
    final = f"{record.version}.json"
    records, _, claimed = _registry_state(storage)
    if final in storage.names() or any(r.version == record.version for r in records):
        raise FileExistsError(
            f"champion record {storage.where(final)} already exists; records are immutable, use a new version"
        )
    current = _current(records, claimed)
    if (current.version if current else None) != record.previous:
        raise ChampionChanged(record.previous, current)
    data = (json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n").encode("utf-8")
    # The commit point: only one promotion can ever replace a given champion.
    if not storage.create(f"{SUCCESSORS}/{_claim_name(record.previous)}", data):
        raise ChampionChanged(record.previous, current_champion(storage))
    # The readable history name; the claim already holds the record if we die before this.
    if not storage.create(final, data):
        raise FileExistsError(
            f"champion record {storage.where(final)} appeared during promotion; the claim holds the record"
        )
    where = storage.where(final)
    return Path(where) if isinstance(storage, DirectoryRegistry) else where


def new_record(
    *,
    checkpoint: str | Path,
    eval_version: str,
    metrics: dict[str, Any],
    reasons: list[str] | tuple[str, ...] = (),
    previous: str | None = None,
    version: str | None = None,
) -> ChampionRecord:
    """A record named after ``eval_version`` (or a fresh sortable id when that is not a valid name)."""
    name = version or (eval_version if _VERSION_RE.match(eval_version) else new_version_id())
    return ChampionRecord(
        version=name,
        checkpoint=str(checkpoint),
        eval_version=eval_version,
        metrics=dict(metrics),
        reasons=tuple(reasons),
        previous=previous,
    )


# --------------------------------------------------------------------------------------
# The decision


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reasons: list[str]
    deltas: dict[str, float | None]  # candidate - champion (and the relative loss change)


def promotion_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers promotion compares, from an eval report (core.eval_report contract).

    Recommendation numbers are the model's ranking metrics on the validation split (test stays untouched by
    model selection). A metric over too few cases is None with ``<metric>_insufficient`` set, and the gate
    then does not decide on it.
    """
    splits = report.get("splits", {})
    model = report.get("recommendation", {}).get("model", {})
    validation = model.get("by_split", {}).get("validation", model)
    insufficient = set(validation.get("insufficient", ()))
    return {
        LOSS_KEY: splits.get("validation", {}).get("loss"),
        "test_loss": splits.get("test", {}).get("loss"),
        "hit@1": validation.get("hit@1"),
        HIT_KEY: validation.get(HIT_KEY),
        f"{HIT_KEY}_insufficient": HIT_KEY in insufficient,
        "hit_n": validation.get("n"),
        **_preference_metrics(report),
        "eval_set": report.get("eval_set"),
    }


def _preference_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The validation pairs' likelihood accuracy (evaluation/preference.py), when the report has pairs."""
    validation = (report.get("preference") or {}).get("by_split", {}).get("validation")
    if not validation:
        return {}
    return {
        PREFERENCE_KEY: validation.get("likelihood_accuracy"),
        f"{PREFERENCE_KEY}_insufficient": "likelihood_accuracy" in validation.get("insufficient", ()),
        "preference_n": validation.get("n"),
    }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def decide_promotion(
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    *,
    loss_margin: float = 0.02,
    hit_margin: float = 0.02,
    preference_margin: float = 0.02,
) -> Decision:
    """Promote unless validation loss is worse by more than ``loss_margin`` (relative), hit@5 is lower by more
    than ``hit_margin`` (absolute), or the held-out pairs' likelihood accuracy is lower by more than
    ``preference_margin`` (absolute; compared only when both have enough pairs). No champion: promoted.

    A candidate without a finite validation loss is never promoted (nothing to judge);
    a metric the champion lacks is not compared, and the reasons say so.
    """
    if loss_margin < 0 or hit_margin < 0:
        raise ValueError(f"margins must be >= 0, got loss_margin={loss_margin}, hit_margin={hit_margin}")
    c_loss, c_hit = _number(candidate.get(LOSS_KEY)), _number(candidate.get(HIT_KEY))
    deltas: dict[str, float | None] = {}
    if c_loss is None:
        return Decision(
            False,
            [f"candidate has no finite {LOSS_KEY} ({candidate.get(LOSS_KEY)!r}): held-out data missing or diverged"],
            deltas,
        )
    if champion is None:
        return Decision(True, ["no champion yet: the first evaluated checkpoint becomes champion"], deltas)
    reasons: list[str] = []
    promoted = True
    ch_loss, ch_hit = _number(champion.get(LOSS_KEY)), _number(champion.get(HIT_KEY))
    if ch_loss is None:
        reasons.append(f"champion has no {LOSS_KEY}; loss not compared")
    else:
        deltas[LOSS_KEY] = c_loss - ch_loss
        rel = (c_loss - ch_loss) / abs(ch_loss) if ch_loss else 0.0
        deltas[f"{LOSS_KEY}_relative"] = rel
        if c_loss > ch_loss + abs(ch_loss) * loss_margin + 1e-12:
            promoted = False
            reasons.append(
                f"{LOSS_KEY} {c_loss:.4f} is {rel:+.1%} vs champion {ch_loss:.4f}, worse than the "
                f"{loss_margin:.1%} margin"
            )
        else:
            reasons.append(f"{LOSS_KEY} {c_loss:.4f} vs champion {ch_loss:.4f} ({rel:+.1%}, margin {loss_margin:.1%})")
    short = [who for who, m in (("candidate", candidate), ("champion", champion)) if m.get(f"{HIT_KEY}_insufficient")]
    if short:
        reasons.append(
            f"{HIT_KEY} not compared: too few held-out validation cases for the {' and '.join(short)} "
            f"(n = {candidate.get('hit_n')}); the decision rests on {LOSS_KEY}"
        )
    elif ch_hit is None:
        reasons.append(f"champion has no {HIT_KEY}; hit rate not compared")
    elif c_hit is None:
        promoted = False
        reasons.append(f"candidate has no {HIT_KEY} but the champion has {ch_hit:.3f}")
    else:
        deltas[HIT_KEY] = c_hit - ch_hit
        if c_hit < ch_hit - hit_margin - 1e-12:
            promoted = False
            reasons.append(
                f"{HIT_KEY} {c_hit:.3f} is {c_hit - ch_hit:+.3f} vs champion {ch_hit:.3f}, below the "
                f"{hit_margin:.3f} margin"
            )
        else:
            reasons.append(
                f"{HIT_KEY} {c_hit:.3f} vs champion {ch_hit:.3f} ({c_hit - ch_hit:+.3f}, margin {hit_margin:.3f})"
            )
    c1, ch1 = _number(candidate.get("hit@1")), _number(champion.get("hit@1"))
    if c1 is not None and ch1 is not None:
        deltas["hit@1"] = c1 - ch1
    if not _preference_within_margin(candidate, champion, preference_margin, reasons, deltas):
        promoted = False
    c_set, ch_set = candidate.get("eval_set"), champion.get("eval_set")
    if c_set and ch_set and c_set != ch_set:
        reasons.append(
            "note: candidate and champion were evaluated on different held-out data "
            f"({c_set} vs {ch_set}); deltas mix model and data changes"
        )
    reasons.insert(0, "promoted: within margins of the champion" if promoted else "not promoted: regression")
    return Decision(promoted, reasons, deltas)


def _preference_within_margin(
    candidate: dict[str, Any],
    champion: dict[str, Any],
    margin: float,
    reasons: list[str],
    deltas: dict[str, float | None],
) -> bool:
    """Compare held-out pair likelihood accuracy where both sides have it on enough pairs; say why not otherwise."""
    if PREFERENCE_KEY not in candidate and PREFERENCE_KEY not in champion:
        return True  # no preference data anywhere: nothing to say
    short = [
        who for who, m in (("candidate", candidate), ("champion", champion)) if m.get(f"{PREFERENCE_KEY}_insufficient")
    ]
    c, ch = _number(candidate.get(PREFERENCE_KEY)), _number(champion.get(PREFERENCE_KEY))
    if short:
        reasons.append(
            f"{PREFERENCE_KEY} not compared: too few held-out validation pairs for the {' and '.join(short)} "
            f"(n = {candidate.get('preference_n')})"
        )
        return True
    if c is None or ch is None:
        missing = "champion" if ch is None else "candidate"
        reasons.append(f"{PREFERENCE_KEY} not compared: the {missing} was not evaluated on preference pairs")
        return True
    deltas[PREFERENCE_KEY] = c - ch
    if c < ch - margin - 1e-12:
        reasons.append(f"{PREFERENCE_KEY} {c:.3f} is {c - ch:+.3f} vs champion {ch:.3f}, below the {margin:.3f} margin")
        return False
    reasons.append(f"{PREFERENCE_KEY} {c:.3f} vs champion {ch:.3f} ({c - ch:+.3f}, margin {margin:.3f})")
    return True


# --------------------------------------------------------------------------------------
# Decide and promote, again and again while the champion moves


@dataclass(frozen=True)
class GateOutcome:
    """How a candidate fared: the decision and the champion that decision was made against."""

    decision: Decision
    champion: ChampionRecord | None  # the champion the final decision compared with
    champion_metrics: dict[str, Any] | None
    record: ChampionRecord | None  # the record written, when promoted
    attempts: int
    superseded_by: tuple[str, ...] = ()  # champions promoted by others while this candidate was compared


def promote_if_better(
    registry: Registry,
    *,
    candidate: dict[str, Any],
    checkpoint: str | Path,
    eval_version: str,
    champion: ChampionRecord | None,
    champion_metrics: dict[str, Any] | None,
    measure: Callable[[ChampionRecord], dict[str, Any] | None],
    loss_margin: float = 0.02,
    hit_margin: float = 0.02,
    preference_margin: float = 0.02,
    max_attempts: int = MAX_PROMOTION_ATTEMPTS,
) -> GateOutcome:
    """Decide against ``champion``; promote with compare-and-swap; if someone promoted in between, measure the
    new champion (``measure``, e.g. re-evaluate it on the candidate's held-out data) and decide again.

    Raises PromotionConflict after ``max_attempts`` lost swaps, so a busy registry cannot spin forever.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    superseded: list[str] = []
    for attempt in range(1, max_attempts + 1):
        decision = decide_promotion(
            candidate,
            champion_metrics,
            loss_margin=loss_margin,
            hit_margin=hit_margin,
            preference_margin=preference_margin,
        )
        if not decision.promoted:
            return GateOutcome(decision, champion, champion_metrics, None, attempt, tuple(superseded))
        record = new_record(
            checkpoint=checkpoint,
            eval_version=eval_version,
            metrics=candidate,
            reasons=decision.reasons,
            previous=champion.version if champion else None,
        )
        try:
            promote(registry, record)
        except ChampionChanged as changed:
            if changed.current is None:  # the champion vanished (records removed by hand): nothing to compare
                raise PromotionConflict(f"{changed}; the registry {registry} lost its champion records") from changed
            champion = changed.current
            superseded.append(champion.version)
            if attempt < max_attempts:
                champion_metrics = measure(champion)
            continue
        return GateOutcome(decision, champion, champion_metrics, record, attempt, tuple(superseded))
    raise PromotionConflict(
        f"the champion changed {max_attempts} times while promoting {eval_version} "
        f"({' -> '.join(superseded)}); evaluate it again when promotions are quieter"
    )
