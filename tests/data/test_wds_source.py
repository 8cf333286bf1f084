"""Webdataset shards: pattern, decoding, exactly-once split over ranks × workers, resume."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from hardneg.data.wds_source import WebDatasetSource, parse_wds
from tests.helpers.ddp import run_distributed
from tests.helpers.wds import COLOURS, SIZES, write_shards


@pytest.fixture
def shards(tmp_path):
    keys = write_shards(tmp_path)
    return f"wds:{tmp_path}/shard-{{000..{len(SIZES) - 1:03d}}}.tar", keys


def test_brace_pattern_expands_in_order(tmp_path, shards):
    spec, _ = shards
    paths = parse_wds(spec)
    assert [p.name for p in paths] == [f"shard-{k:03d}.tar" for k in range(len(SIZES))]


def test_samples_decode_like_open_clip_shards(tmp_path):
    spec_keys = write_shards(tmp_path, sizes=[3], broken_shard=0)
    source = WebDatasetSource(f"wds:{tmp_path}/shard-000.tar", 8, keep_json=True)
    samples = list(source)
    assert [s["key"] for s in samples] == spec_keys[0]  # broken samples skipped
    for j, s in enumerate(samples):
        assert s["image"].shape == (3, 8, 8) and s["image"].dtype == torch.float32
        expected = torch.tensor(COLOURS[j % 3], dtype=torch.float32) / 255
        assert torch.allclose(s["image"].mean(dim=(1, 2)), expected, atol=0.03)  # JPEG error
        assert s["caption"] == f"caption k0_{j}" and s["shard"] == 0
        assert s["json"] == ({"j": 0} if j == 0 else {})
    assert [s["shard_end"] for s in samples] == [False, False, True]


def _epoch_keys(spec, rank, world, workers, seed=3, epoch=0):
    source = WebDatasetSource(spec, 4, seed=seed, rank=rank, world_size=world)
    source.set_epoch(epoch)
    loader = DataLoader(source, batch_size=None, num_workers=workers)
    return [(s["key"], int(s["shard"])) for s in loader]


@pytest.mark.parametrize("epoch", [0, 1])
def test_two_ranks_two_workers_see_every_sample_once(shards, epoch):
    spec, keys = shards
    per_rank = [_epoch_keys(spec, r, 2, 2, epoch=epoch) for r in range(2)]
    seen = [k for rank in per_rank for k, _ in rank]
    everything = [k for shard in keys.values() for k in shard]
    assert sorted(seen) == sorted(everything)  # every sample, exactly once
    shards_of = [{s for _, s in rank} for rank in per_rank]
    assert not shards_of[0] & shards_of[1]  # a shard belongs to one rank
    # ... and to one worker: the four (rank, worker) slots partition the shards
    slots = []
    for r in range(2):
        source = WebDatasetSource(spec, 4, seed=3, rank=r, world_size=2)
        source.set_epoch(epoch)
        slots += [source.assigned_shards(w, 2) for w in range(2)]
    flat = [s for slot in slots for s in slot]
    assert sorted(flat) == list(range(len(SIZES))) and all(slots)
    assert {s for slot in slots[:2] for s in slot} == shards_of[0]


def test_shard_order_is_deterministic_per_epoch_and_seed(shards):
    spec, _ = shards
    source = WebDatasetSource(spec, 4, seed=3)
    orders = []
    for epoch in range(4):
        source.set_epoch(epoch)
        orders.append(source.shard_order())
    again = WebDatasetSource(spec, 4, seed=3)
    again.set_epoch(2)
    assert again.shard_order() == orders[2]
    assert len({tuple(o) for o in orders}) > 1  # epochs reshuffle
    assert all(sorted(o) == list(range(len(SIZES))) for o in orders)
    assert [s["shard"] for s in _dedupe(again)] == orders[2]  # read in that order


def _dedupe(source):
    out = []
    for s in source:
        if not out or out[-1]["shard"] != s["shard"]:
            out.append(s)
    return out


@pytest.mark.parametrize("finished_shards", [1, 3])
def test_resume_after_k_shards_yields_exactly_the_rest(shards, finished_shards):
    spec, keys = shards
    uninterrupted = WebDatasetSource(spec, 4, seed=5)
    uninterrupted.set_epoch(1)
    epoch_order = [s["shard"] for s in _dedupe(uninterrupted)]
    source = WebDatasetSource(spec, 4, seed=5)
    source.set_epoch(1)
    consumed = set()
    for batch in DataLoader(source, batch_size=2):  # collated batches, as a loop sees them
        source.record(batch)
        consumed.update(batch["key"])
        complete = [k for k, ks in keys.items() if set(ks) <= consumed]
        if len(complete) >= finished_shards:
            break
    partial = [k for k, ks in keys.items() if set(ks) & consumed and k not in complete]
    assert partial  # the last batch began the next shard: it must be read again
    state = source.state_dict()
    assert state["epoch"] == 1 and state["finished"] == {0: sorted(complete)}
    resumed = WebDatasetSource(spec, 4, seed=5)
    resumed.load_state_dict(state)
    samples = list(resumed)
    expected = sorted(k for shard, ks in keys.items() if shard not in complete for k in ks)
    assert sorted(s["key"] for s in samples) == expected
    # ... in the interrupted epoch's shard order
    assert [s["shard"] for s in _dedupe(samples)] == [s for s in epoch_order if s not in complete]


def test_resume_with_another_world_size_uses_every_ranks_finished_shards(shards):
    spec, keys = shards
    state = WebDatasetSource(spec, 4, seed=0).state_dict()
    state["finished"] = {0: [1, 4], 1: [6]}  # as gathered from two ranks
    ranks = [WebDatasetSource(spec, 4, seed=0, rank=r, world_size=3) for r in range(3)]
    for source in ranks:
        source.load_state_dict(state)
    got = sorted(s["key"] for source in ranks for s in source)
    assert got == sorted(k for shard, ks in keys.items() if shard not in (1, 4, 6) for k in ks)


def test_new_epoch_forgets_finished_shards(shards):
    spec, _ = shards
    source = WebDatasetSource(spec, 4)
    source.finished = {0: {0, 1}}
    source.set_epoch(1)
    assert len(list(source)) == sum(SIZES)


def test_bad_specs_name_data_and_the_pattern(tmp_path, shards):
    spec, _ = shards
    with pytest.raises(ValueError, match=r"--data 'csv:x\.csv' is not a webdataset spec"):
        parse_wds("csv:x.csv")
    with pytest.raises(ValueError, match="--data"):
        parse_wds("wds:")
    with pytest.raises(ValueError, match=r"--data wds:.*\{000\.\.002\.tar: unbalanced braces"):
        parse_wds(f"wds:{tmp_path}/shard-{{000..002.tar")
    with pytest.raises(FileNotFoundError, match=r"--data wds:.*nowhere.*none of the 3 shards"):
        WebDatasetSource(f"wds:{tmp_path}/nowhere-{{000..002}}.tar", 4)
    with pytest.raises(FileNotFoundError, match=r"2 of 10 shards are missing.*shard-008\.tar"):
        parse_wds(f"wds:{tmp_path}/shard-{{000..009}}.tar")
    source = WebDatasetSource(spec, 4, seed=1)
    with pytest.raises(ValueError, match="same --data and seed"):
        source.load_state_dict({**source.state_dict(), "seed": 2})


def _state_worker(rank, world, spec):
    source = WebDatasetSource(spec, 4)  # rank and world size from torch.distributed
    source.record({"shard": torch.tensor([rank, rank + 2]), "shard_end": torch.tensor([1, 0])})
    return {"rank": source.rank, "world": source.world_size, "state": source.state_dict()}


@pytest.mark.slow
def test_state_dict_gathers_every_ranks_finished_shards(shards):
    spec, _ = shards
    for rank, out in enumerate(run_distributed(_state_worker, 2, spec)):
        assert (out["rank"], out["world"]) == (rank, 2)
        assert out["state"]["finished"] == {0: [0], 1: [1]}
