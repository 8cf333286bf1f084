"""PeakMemory: the peak of the block, not of what the process did before it."""

from __future__ import annotations

import sys

import pytest
import torch

from hardneg.train.memory import PeakMemory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="exact peak reset is Linux-only")
def test_peak_memory_counts_the_block_only():
    big = torch.ones(64, 2**20)  # 256 MiB touched and freed before the block
    del big
    with PeakMemory("cpu") as peak:
        x = torch.ones(32, 2**20)  # 128 MiB
        del x
    assert 100 < peak.mib < 200
    with PeakMemory("cpu") as idle:
        pass
    assert idle.mib < 20
