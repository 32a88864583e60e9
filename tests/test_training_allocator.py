"""Trainer processes keep freed step buffers: the next step's tensors of the same size are not page-faulted in."""

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

# A 24 MiB tensor, like a step's logits or activations: written, freed, then allocated and written again.
# Counts the minor page faults of the second round, in a fresh process (the settings are process-wide).
PROBE = """
import json, resource, sys
import torch
from training import allocator
applied = allocator.keep_freed_memory() if sys.argv[1] == "on" else None
def faults_of_one_round():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = torch.empty(6 << 20, dtype=torch.float32)
    buffer.fill_(1.0)
    del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_round()
print(json.dumps({"applied": applied, "faults": faults_of_one_round()}))
"""

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's mallopt")


def _second_round_faults(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc_only
def test_a_freed_step_buffer_is_reused_without_page_faults() -> None:
    kept = _second_round_faults("on")
    assert kept["applied"] is True
    assert kept["faults"] < 100  # 24 MiB is 6,144 pages of 4 KiB


def _huge_pages_always() -> bool:
    """With transparent huge pages always on, a fresh mapping faults in 2 MiB at a time: few faults to count."""
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@glibc_only
@pytest.mark.skipif(_huge_pages_always(), reason="transparent huge pages are always on: fresh mappings fault per 2 MiB")
def test_without_the_settings_glibc_maps_the_buffer_afresh() -> None:
    """The case the settings exist for; if glibc stops doing this, the settings can go."""
    assert _second_round_faults("off")["faults"] > 3000
