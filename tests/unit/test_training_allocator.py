"""Trainer processes keep freed step buffers: a step's next buffer of the same size reuses the pages, no faults."""

import json
import platform
import subprocess
import sys

import pytest

# A 24 MiB tensor, like a step's logits or activations: written and freed again and again, as steps do,
# then once more while the minor page faults are counted; in a fresh process (the settings are
# process-wide). The first rounds are warm-up: a 64-byte aligned block needs a little more than the
# block of the same size freed before it, so the heap grows for a few rounds (about six here) until
# freed neighbours have merged into a hole that fits, as in a training run's first steps.
PROBE = """
import json, resource
import torch
from training.cpu import allocator
torch.set_num_threads(1)
applied = allocator.keep_freed_memory()
def faults_of_one_round():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = torch.empty(6 << 20, dtype=torch.float32)
    buffer.fill_(1.0)
    del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
for _ in range(16):
    faults_of_one_round()
print(json.dumps({"applied": applied, "faults": faults_of_one_round()}))
"""

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's mallopt")


def _steady_round_faults() -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@glibc_only
def test_a_freed_step_buffer_is_reused_without_page_faults() -> None:
    kept = _steady_round_faults()
    assert kept["applied"] is True
    assert kept["faults"] < 100  # 24 MiB is 6,144 pages of 4 KiB
