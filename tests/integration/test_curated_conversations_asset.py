"""Cross-day dedup of curated_conversations holds however days are launched: concurrently, out of order, again.

A UI backfill ("materialize partition range") or several `dagster asset materialize` commands curate days in
separate processes at the same time. Each text (content_hash) must still land on one day only.
"""

import json
import multiprocessing
import shutil
import sys
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from assets.catalog import raw_catalog, raw_interactions
from assets.conversations import CurationRunConfig, curated_conversations
from resources.landing import LandingArea
from resources.warehouse import TABLES, Warehouse, create_table_sql

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]
SHARED = [
    {
        "messages": [
            {"role": "user", "content": f"Partner question number {i}: what should I watch tonight?"},
            {"role": "assistant", "content": f"Partner answer number {i}: try something from the catalog."},
        ]
    }
    for i in range(6)
]


def _resources(home: Path) -> dict:
    return {
        "warehouse": Warehouse(path=str(home / "w.duckdb"), lock_timeout_s=120),
        "landing": LandingArea(root=str(home / "landing"), synthetic_titles=60, synthetic_members=80),
    }


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """raw.catalog and raw.interactions for DAYS, and the same partner file dropped on every day (built once)."""
    root = tmp_path_factory.mktemp("ingested")
    resources = _resources(root)
    instance = dg.DagsterInstance.ephemeral()
    assets = [raw_catalog, raw_interactions]
    assert dg.materialize(assets, selection=["raw_catalog"], resources=resources, instance=instance).success
    for day in DAYS:
        assert dg.materialize(
            assets, selection=["raw_interactions"], partition_key=day, resources=resources, instance=instance
        ).success
        folder = root / "landing" / "conversations" / f"day={day}"
        (folder / "shared.jsonl").write_text("".join(json.dumps(c) + "\n" for c in SHARED))
    return root


@pytest.fixture
def home(ingested: Path, tmp_path: Path) -> Path:
    """A copy of the ingested home of this test's own: tests curate, break and rewrite it."""
    shutil.copytree(ingested, tmp_path, dirs_exist_ok=True)
    return tmp_path


def _curate(home: Path, day: str) -> dg.ExecuteInProcessResult:
    return dg.materialize([curated_conversations], partition_key=day, resources=_resources(home))


def _curate_in_child(home: str, day: str, barrier, out: str) -> None:
    """Child process: curate `day`, holding every process at a barrier once its first curation pass is done.

    The barrier makes the race deterministic: every day has read the hashes curated on other days (none yet)
    and computed its result before any day writes, which is the worst interleaving separate processes can get.
    """
    import assets.conversations as conversations
    import resources.curation_commit as curation_commit

    real_curate = curation_commit.curate
    calls = []

    def curate_then_wait(*args, **kwargs):
        result = real_curate(*args, **kwargs)
        calls.append(day)
        if len(calls) == 1:
            barrier.wait(timeout=300)
        return result

    curation_commit.curate = curate_then_wait
    result = dg.materialize(
        [conversations.curated_conversations],
        partition_key=day,
        resources=_resources(Path(home)),
        raise_on_error=False,
    )
    meta = {}
    if result.success:
        event = result.get_asset_materialization_events()[-1]
        meta = {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}
    Path(out).write_text(json.dumps({"success": result.success, "meta": meta}, default=str))
    sys.exit(0 if result.success else 1)


def _duplicated_hashes(home: Path) -> list[tuple]:
    wh = Warehouse(path=str(home / "w.duckdb"))
    return wh.query(
        "SELECT content_hash, list(DISTINCT day ORDER BY day) AS days FROM curated.conversations "
        "GROUP BY content_hash HAVING count(*) > 1"
    ).rows()


def _shared_rows(home: Path) -> list[tuple]:
    """(day, first user message) of the partner conversations that were kept."""
    wh = Warehouse(path=str(home / "w.duckdb"))
    rows = wh.query("SELECT day, messages FROM curated.conversations WHERE kind = 'external'").rows()
    return sorted((d, m[0]["content"]) for d, m in rows if m[0]["content"].startswith("Partner question"))


@pytest.mark.slow
def test_days_curated_at_the_same_time_in_separate_processes_keep_each_text_once(home: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(DAYS))
    procs = []
    for day in DAYS:
        out = str(home / f"result-{day}.json")
        procs.append((day, out, ctx.Process(target=_curate_in_child, args=(str(home), day, barrier, out))))
    for _, _, proc in procs:
        proc.start()
    for _, _, proc in procs:
        proc.join(timeout=600)
    results = {day: json.loads(Path(out).read_text()) for day, out, _ in procs}
    assert [proc.exitcode for _, _, proc in procs] == [0, 0, 0], results

    assert _duplicated_hashes(home) == []
    kept = _shared_rows(home)
    # Every partner conversation is kept exactly once, on some day, and quarantined on the other two.
    assert sorted(text for _, text in kept) == sorted(c["messages"][0]["content"] for c in SHARED)
    wh = Warehouse(path=str(home / "w.duckdb"))
    dup_reasons = wh.query(
        "SELECT count(*) AS n FROM curated.quarantine WHERE reason = 'duplicate_of_earlier_day' "
        "AND payload LIKE '%Partner question number%'"
    )["n"][0]
    assert dup_reasons == 2 * len(SHARED)
    # The losers found out inside their write transaction (every process had passed the barrier by then).
    raced = sorted(r["meta"]["cross_day_race_rows"] for r in results.values())
    assert raced[0] == 0 and sum(raced) >= 2 * len(SHARED)
    for r in results.values():
        stats = r["meta"]["curation_stats"]
        assert stats["rows_in"] == stats["rows_out"] + stats["quarantined"]


def test_days_curated_out_of_order_and_again_keep_each_text_once(home: Path) -> None:
    for day in ["2026-01-03", "2026-01-01", "2026-01-02", "2026-01-01", "2026-01-03"]:
        assert _curate(home, day).success
    assert _duplicated_hashes(home) == []
    kept = _shared_rows(home)
    # The first day to commit a text keeps it; re-running that day (or another) does not move it.
    assert {d for d, _ in kept} == {date(2026, 1, 3)} and len(kept) == len(SHARED)


def test_a_failed_quarantine_write_leaves_the_days_conversations_as_they_were(home: Path) -> None:
    """Data rows and quarantine rows of a day are one transaction: a reader never sees one without the other."""
    day = DAYS[0]
    assert _curate(home, day).success
    wh = Warehouse(path=str(home / "w.duckdb"))
    before = wh.query("SELECT content_hash FROM curated.conversations ORDER BY 1")["content_hash"].to_list()
    late = {"messages": [{"role": "user", "content": "A late partner line"}, {"role": "assistant", "content": "ok"}]}
    (home / "landing" / "conversations" / f"day={day}" / "late.jsonl").write_text(json.dumps(late) + "\n")
    with wh.connect() as con:  # the database itself now refuses every quarantine row: a failure mid-transaction
        con.execute("DROP TABLE curated.quarantine")
        ddl = create_table_sql("curated.quarantine", TABLES["curated.quarantine"])
        con.execute(ddl[:-1] + ", CHECK (reason IS NULL))")
    resources = _resources(home)
    with dg.build_asset_context(partition_key=day) as context, pytest.raises(duckdb.ConstraintException):
        curated_conversations(context, config=CurationRunConfig(), **resources)
    after = wh.query("SELECT content_hash FROM curated.conversations ORDER BY 1")["content_hash"].to_list()
    assert after == before


# ------------------------------------------------------------------------------- permanent errors, encodings


def test_an_empty_catalog_fails_the_step_once_without_retries(tmp_path: Path) -> None:
    """Retrying cannot fill raw.catalog: the step fails at once with what to do, not three times."""
    result = dg.materialize(
        [curated_conversations], partition_key=DAYS[0], resources=_resources(tmp_path), raise_on_error=False
    )
    assert not result.success
    events = [e.event_type_value for e in result.all_events]
    assert events.count("STEP_FAILURE") == 1 and "STEP_UP_FOR_RETRY" not in events
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "materialize raw_catalog first" in failure.step_failure_data.error.message
    assert failure.step_failure_data.user_failure_data is not None  # a dg.Failure, not a crash


LATIN1_CHATS = [
    {"messages": [{"role": "user", "content": "Who is José?"}, {"role": "assistant", "content": "A member."}]},
    {"messages": [{"role": "user", "content": "Who is Josè?"}, {"role": "assistant", "content": "A member."}]},
    {"messages": [{"role": "user", "content": "Plain ASCII line"}, {"role": "assistant", "content": "Fine."}]},
]


def _latin1_drop(home: Path, day: str) -> None:
    folder = home / "landing" / "conversations" / f"day={day}"
    text = "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in LATIN1_CHATS)
    (folder / "partner-latin1.jsonl").write_bytes(text.encode("latin-1"))


def _kept_questions(home: Path, day: str) -> list[str]:
    wh = Warehouse(path=str(home / "w.duckdb"))
    rows = wh.query("SELECT messages FROM curated.conversations WHERE kind = 'external' AND day = ?", [day])
    return sorted(
        m[0]["content"] for m in rows["messages"].to_list() if "?" in m[0]["content"] or "ASCII" in m[0]["content"]
    )


def test_a_latin1_drop_is_quarantined_as_utf8_and_read_exactly_with_its_encoding(home: Path) -> None:
    day = DAYS[0]
    _latin1_drop(home, day)
    assert _curate(home, day).success  # default utf-8: the two lines with é/è are encoding_error, the rest is kept
    assert "Plain ASCII line" in _kept_questions(home, day)
    assert not any("Jos" in q for q in _kept_questions(home, day))
    wh = Warehouse(path=str(home / "w.duckdb"))
    bad = wh.query("SELECT detail FROM curated.quarantine WHERE reason = 'encoding_error' AND day = ?", [day])
    assert sorted(d.split(": ")[0] for d in bad["detail"].to_list()) == [
        "partner-latin1.jsonl:1",
        "partner-latin1.jsonl:2",
    ]

    resources = _resources(home)
    resources["landing"] = LandingArea(
        root=str(home / "landing"), synthetic_titles=60, synthetic_members=80, conversation_encoding="latin-1"
    )
    assert dg.materialize([curated_conversations], partition_key=day, resources=resources).success
    questions = _kept_questions(home, day)
    assert "Who is José?" in questions and "Who is Josè?" in questions  # two texts, never merged into Jos?


def test_encoding_settings_reach_the_landing_resource_and_a_typo_names_the_variable(monkeypatch, tmp_path) -> None:
    from core.settings import load_settings
    from dagster_project.resources import build_resources

    monkeypatch.setenv("PLATFORM_HOME", str(tmp_path))
    monkeypatch.setenv("CATALOG_ENCODING", "utf-8-sig")
    monkeypatch.setenv("INTERACTION_ENCODING", "latin-1")
    monkeypatch.setenv("CONVERSATION_ENCODING", "cp1252")
    landing = build_resources(load_settings())["landing"]
    assert (landing.catalog_encoding, landing.interaction_encoding, landing.conversation_encoding) == (
        "utf-8-sig",
        "latin-1",
        "cp1252",
    )
    monkeypatch.setenv("INTERACTION_ENCODING", "latin-one")
    with pytest.raises(ValueError, match="INTERACTION_ENCODING='latin-one'"):
        load_settings()
    monkeypatch.setenv("INTERACTION_ENCODING", "utf-8")
    monkeypatch.setenv("CONVERSATION_ENCODING", "utf-16")  # JSONL is split into lines before decoding
    with pytest.raises(ValueError, match="CONVERSATION_ENCODING='utf-16'"):
        load_settings()
    with pytest.raises(ValueError, match=r"LandingArea\.conversation_encoding"):
        LandingArea(root=str(tmp_path), conversation_encoding="utf-16")


@pytest.mark.parametrize("attempts", [1, 5], ids=["curated-again-inside-the-transaction", "curated-again-outside"])
def test_a_text_another_day_gives_up_during_curation_is_kept_not_lost(home: Path, monkeypatch, attempts: int) -> None:
    """Day 2 holds the partner texts; while day 1 is being curated, day 2 is re-curated without them (its partner
    file was withdrawn). Day 1 saw them as taken in its snapshot, but must keep them: otherwise no day has them.
    Day 1 notices inside its transaction and curates again, outside it (then commits) or, on its last attempt,
    inside it."""
    import resources.curation_commit as curation_commit

    monkeypatch.setattr(curation_commit, "CURATION_ATTEMPTS", attempts)
    assert _curate(home, DAYS[1]).success
    real_curate = curation_commit.curate
    calls = []

    def curate_while_day2_changes(*args, **kwargs):
        result = real_curate(*args, **kwargs)
        if not calls:
            (home / "landing" / "conversations" / f"day={DAYS[1]}" / "shared.jsonl").unlink()
            monkeypatch.setattr(curation_commit, "curate", real_curate)
            assert _curate(home, DAYS[1]).success  # day 2 commits without the partner texts
        calls.append(1)
        return result

    monkeypatch.setattr(curation_commit, "curate", curate_while_day2_changes)
    assert _curate(home, DAYS[0]).success
    assert {d for d, _ in _shared_rows(home)} == {date(2026, 1, 1)} and len(_shared_rows(home)) == len(SHARED)
    assert _duplicated_hashes(home) == []


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("max_turns", 1, "max_turns=1 must be >= 2"),
        ("max_exchanges", 9, "max_exchanges=9 must be between 1 and 4"),
        ("quarantine_rate_max", 1.5, "quarantine_rate_max=1.5 must be between 0 and 1"),
    ],
)
def test_a_bad_run_config_value_fails_the_step_once_naming_the_field(
    home: Path, field: str, value: float, named: str
) -> None:
    """A config value is wrong until someone changes it: the retry policy must not run the step again."""
    result = dg.materialize(
        [curated_conversations],
        partition_key=DAYS[0],
        resources=_resources(home),
        run_config={"ops": {"curated_conversations": {"config": {field: value}}}},
        raise_on_error=False,
    )
    assert not result.success
    events = [e.event_type_value for e in result.all_events]
    assert events.count("STEP_START") == 1 and events.count("STEP_FAILURE") == 1
    assert "STEP_UP_FOR_RETRY" not in events and "STEP_RESTARTED" not in events
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_failure_data.user_failure_data is not None  # a dg.Failure, not a crash
    message = failure.step_failure_data.error.message
    assert named in message and "ops.curated_conversations.config" in message
