"""benchmarks/vocab_memory.py: both sides take the same step; the report names the memory source."""

import pytest

from benchmarks.vocab_memory import report, worker

pytestmark = pytest.mark.usefixtures("restore_torch_globals")


def test_the_two_sides_compute_the_same_step_and_the_report_renders() -> None:
    off = worker(1000, "off", rows=1, seq_len=64, threads=1)
    on = worker(1000, "on", rows=1, seq_len=64, threads=1)
    assert (off["chunked"], on["chunked"]) == (False, True)
    assert on["loss"] == pytest.approx(off["loss"], rel=1e-6)
    assert on["labelled_positions"] == off["labelled_positions"] > 0
    assert on["peak_rss_mib"] >= on["rss_before_step_mib"] > 0
    meta = {"command": "python -m benchmarks.vocab_memory", "commit": "abc", "dirty": False, "rows": 1}
    meta |= {"seq_len": 64, "threads": 1, "machine": {"cpu_model": "cpu", "ram_gib": 1, "load_average_at_start": []}}
    text = report([{"model": "tiny", **off}, {"model": "tiny", **on}], meta)
    assert "ru_maxrss" in text and "| tiny | chunked |" in text and "| tiny | full logits |" in text
