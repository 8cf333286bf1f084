"""Content and module fingerprints (the keys of the on-disk caches): equal iff the content is."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hardneg.data.fingerprint import content_fingerprint, module_fingerprint


def test_module_fingerprint_follows_the_weights_and_the_class():
    torch.manual_seed(0)
    tower = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3))
    copy = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3))
    copy.load_state_dict(tower.state_dict())
    assert module_fingerprint(tower) == module_fingerprint(copy)
    with torch.no_grad():
        copy[0].weight[1, 1] += 1e-3
    assert module_fingerprint(copy) != module_fingerprint(tower)
    # a different class with the same tensors is a different model, too
    assert module_fingerprint(nn.Linear(2, 3)) != module_fingerprint(nn.Bilinear(2, 2, 3))
    with pytest.raises(ValueError, match="Module"):
        module_fingerprint("not a module")


def test_content_fingerprint_follows_the_content_and_dtypes():
    captions = ["a red 3 left of a blue 7", "a green 1 above a cyan 2"]
    edited = ["a red 3 left of a blue 7", "a green 1 above a cyan 4"]
    assert content_fingerprint(captions) == content_fingerprint(list(captions))
    assert content_fingerprint(captions) != content_fingerprint(edited)
    assert content_fingerprint(np.arange(3)) != content_fingerprint(np.arange(3.0))
