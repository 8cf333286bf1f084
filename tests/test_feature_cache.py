"""FeatureCache: hits, misses, invalidation on model/data change, recovery from corruption."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from hardneg.data.cache import FeatureCache, content_fingerprint, module_fingerprint

SHAPE = (3, 2)


def reference(indices) -> np.ndarray:
    """Closed-form features: item i → [[i, -i], [i², 1], [0.5, i/10]]."""
    i = np.asarray(indices, dtype=np.float64)
    return np.stack(
        [
            np.stack([i, -i], 1),
            np.stack([i**2, np.ones_like(i)], 1),
            np.stack([np.full_like(i, 0.5), i / 10], 1),
        ],
        axis=1,
    ).astype(np.float32)


class Recorder:
    """compute_fn that records every call."""

    def __init__(self):
        self.calls: list[list[int]] = []

    def __call__(self, idx):
        self.calls.append(np.asarray(idx).tolist())
        return torch.from_numpy(reference(idx))


def never(idx):
    raise AssertionError(f"cache miss for {idx}: the features should have been cached")


def make(root, model="model-a", data="data-1", n=10, **kw):
    return FeatureCache(root, model, data, n_items=n, shape=SHAPE, **kw)


def test_miss_computes_only_missing_items_then_hits(tmp_path):
    cache, fn = make(tmp_path), Recorder()
    out = cache.get_or_compute([4, 1, 4], fn)
    np.testing.assert_array_equal(out.numpy(), reference([4, 1, 4]))
    assert fn.calls == [[1, 4]]
    out = cache.get_or_compute(torch.tensor([1, 2, 3]), fn)
    np.testing.assert_array_equal(out.numpy(), reference([1, 2, 3]))
    assert fn.calls == [[1, 4], [2, 3]]
    np.testing.assert_array_equal(cache.get_or_compute([3, 4], never).numpy(), reference([3, 4]))
    assert cache.n_filled == 4 and not cache.complete


def test_reopened_cache_hits_from_disk(tmp_path):
    make(tmp_path).fill(Recorder(), batch_size=3, progress=False)
    again = make(tmp_path)
    assert again.complete
    np.testing.assert_array_equal(
        again.get_or_compute(range(10), never).numpy(), reference(range(10))
    )
    meta = json.loads((again.directory / "meta.json").read_text())
    assert meta["complete"] is True and meta["shape"] == list(SHAPE)


def test_fill_computes_in_batches_and_resumes_after_an_interruption(tmp_path):
    cache, fn = make(tmp_path, n=7), Recorder()

    def flaky(idx):
        if fn.calls:
            raise RuntimeError("interrupted")
        return fn(idx)

    with pytest.raises(RuntimeError, match="interrupted"):
        cache.fill(flaky, batch_size=3, progress=False)
    assert make(tmp_path, n=7).n_filled == 3
    resumed, fn2 = make(tmp_path, n=7), Recorder()
    features = resumed.fill(fn2, batch_size=3, progress=False)
    assert fn2.calls == [[3, 4, 5], [6]]
    np.testing.assert_array_equal(np.asarray(features), reference(range(7)))


def test_changed_weight_invalidates(tmp_path):
    torch.manual_seed(0)
    tower = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3))
    copy = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3))
    copy.load_state_dict(tower.state_dict())
    assert module_fingerprint(tower) == module_fingerprint(copy)
    make(tmp_path, model=module_fingerprint(tower)).fill(Recorder(), progress=False)
    make(tmp_path, model=module_fingerprint(copy)).get_or_compute([0, 9], never)  # still a hit

    with torch.no_grad():
        copy[0].weight[1, 1] += 1e-3
    assert module_fingerprint(copy) != module_fingerprint(tower)
    fn = Recorder()
    make(tmp_path, model=module_fingerprint(copy)).get_or_compute([0, 9], fn)
    assert fn.calls == [[0, 9]]
    # a different class with the same tensors is a different model, too
    assert module_fingerprint(nn.Linear(2, 3)) != module_fingerprint(nn.Bilinear(2, 2, 3))


def test_changed_data_invalidates(tmp_path):
    captions = ["a red 3 left of a blue 7", "a green 1 above a cyan 2"]
    edited = ["a red 3 left of a blue 7", "a green 1 above a cyan 4"]
    assert content_fingerprint(captions) == content_fingerprint(list(captions))
    assert content_fingerprint(captions) != content_fingerprint(edited)
    assert content_fingerprint(np.arange(3)) != content_fingerprint(np.arange(3.0))
    make(tmp_path, data=content_fingerprint(captions), n=2).fill(Recorder(), progress=False)
    make(tmp_path, data=content_fingerprint(captions), n=2).get_or_compute([0, 1], never)
    fn = Recorder()
    make(tmp_path, data=content_fingerprint(edited), n=2).get_or_compute([0, 1], fn)
    assert fn.calls == [[0, 1]]


def test_truncated_feature_file_is_detected_and_rebuilt(tmp_path):
    cache = make(tmp_path)
    cache.fill(Recorder(), progress=False)
    path = cache.directory / "features.npy"
    del cache
    path.write_bytes(path.read_bytes()[:150])
    with pytest.warns(RuntimeWarning, match="corrupt or stale"):
        rebuilt = make(tmp_path)
    assert rebuilt.n_filled == 0
    fn = Recorder()
    np.testing.assert_array_equal(rebuilt.get_or_compute([5], fn).numpy(), reference([5]))
    assert fn.calls == [[5]]


def test_interrupted_build_without_meta_and_changed_shape_are_rebuilt(tmp_path):
    cache = make(tmp_path)
    cache.fill(Recorder(), progress=False)
    (cache.directory / "meta.json").unlink()
    with pytest.warns(RuntimeWarning, match="no meta.json"):
        assert make(tmp_path).n_filled == 0
    make(tmp_path).fill(Recorder(), progress=False)
    with pytest.warns(RuntimeWarning, match="different cache"):
        other = FeatureCache(tmp_path, "model-a", "data-1", n_items=10, shape=(4,))
    assert other.n_filled == 0


def test_bad_inputs_raise_and_cache_nothing(tmp_path):
    cache = make(tmp_path)
    with pytest.raises(ValueError, match=r"expected \(2, 3, 2\)"):
        cache.get_or_compute([0, 1], lambda idx: torch.zeros(len(idx), 6))
    with pytest.raises(ValueError, match="non-finite"):
        cache.get_or_compute([0], lambda idx: torch.full((1, 3, 2), float("nan")))
    assert cache.n_filled == 0
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        cache.get_or_compute([10], never)
    with pytest.raises(KeyError, match="not in the feature cache"):
        cache.get([3])
    with pytest.raises(ValueError, match="model_fingerprint"):
        FeatureCache(tmp_path, "", "d", n_items=2, shape=(1,))
    with pytest.raises(ValueError, match="Module"):
        module_fingerprint("not a module")
