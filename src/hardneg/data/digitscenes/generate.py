"""DigitScenes generation: scene configurations, scans, layout, pixels and words of a split.

Splits: ``train``, ``val``, ``test`` draw from disjoint pools of scans (by scan index) and
never show the held-out (digit, colour) combinations, not even in hard-negative text;
``test_novel`` scenes (test scans) each contain at least one held-out combination. With
repeated configurations (``DigitScenesConfig.repeats`` / ``test_repeats``), train and test show
the same few configurations in many scenes each; val and test_novel never do.
Generation is deterministic from the config (every split has its own random streams).
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np

from hardneg.data.digitscenes.captions import partial_captions, scene_captions
from hardneg.data.digitscenes.config import SPLITS, DigitScenesConfig, check_split
from hardneg.data.digitscenes.render import digit_scans, layout_boxes, rasterise, scan_pools
from hardneg.data.digitscenes.scenes import SceneSplit
from hardneg.data.digitscenes.semantics import COLOURS, N_COMBOS, RELATIONS, semantic_id

__all__ = ["generate_digitscenes", "generate_split"]

_SCAN_POOL = {"train": 0, "val": 1, "test": 2, "test_novel": 2}


def _allowed(config: DigitScenesConfig, split: str) -> np.ndarray:
    allowed = np.ones(N_COMBOS, dtype=bool)
    if split != "test_novel":
        for d, c in config.novel_combos:
            allowed[d * len(COLOURS) + c] = False
    return allowed


def _sample_objects(
    config: DigitScenesConfig, split: str, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Number of objects (N,) and their (digit, colour) combos (N, 3), -1 where absent."""
    n_objects = np.where(rng.random(n) < config.p_three, 3, 2)
    if split == "test_novel":
        combos = rng.integers(0, N_COMBOS, size=(n, 3))
        novel = np.array([d * len(COLOURS) + c for d, c in config.novel_combos])
        slot = np.floor(rng.random(n) * n_objects).astype(np.int64)
        combos[np.arange(n), slot] = novel[rng.integers(0, len(novel), size=n)]
    else:
        seen = np.flatnonzero(_allowed(config, split))
        combos = seen[rng.integers(0, len(seen), size=(n, 3))]
    combos[np.arange(3)[None, :] >= n_objects[:, None]] = -1
    return n_objects, combos


def _repeat_configurations(
    config: DigitScenesConfig,
    split: str,
    n_objects: np.ndarray,
    combos: np.ndarray,
    axis: np.ndarray,
) -> None:
    """Give ``config.repeats_in(split)`` random scenes of ``split`` each of the
    ``config.repeated_configs`` repeated configurations (in place); the other scenes keep
    theirs. The configurations are train's on every split (drawn from train's repeat stream,
    so test repeats exactly the configurations training saw repeated); the members are drawn
    from the split's own repeat stream (train's continues after the configurations)."""
    rng = np.random.default_rng([config.seed, SPLITS.index("train"), 2])
    g, k = config.repeated_configs, config.repeats_in(split)
    while True:  # G distinct configurations (two equal ones would double the rate)
        g_objects, g_combos = _sample_objects(config, "train", g, rng)
        g_axis = rng.integers(0, len(RELATIONS), size=g)
        if len({(int(a), *c.tolist()) for a, c in zip(g_axis, g_combos)}) == g:
            break
    if split != "train":
        rng = np.random.default_rng([config.seed, SPLITS.index(split), 2])
    members = rng.permutation(len(axis))[: g * k].reshape(g, k)
    for group in range(g):
        n_objects[members[group]] = g_objects[group]
        combos[members[group]] = g_combos[group]
        axis[members[group]] = g_axis[group]


def generate_split(config: DigitScenesConfig, split: str) -> SceneSplit:
    """Generate one split in memory (deterministic in ``config`` and ``split``).

    Args:
        config: sizes, canvas and seed.
        split: one of :data:`SPLITS`.

    Example:
        >>> from hardneg.data.digitscenes.config import DigitScenesConfig
        >>> cfg = DigitScenesConfig(n_train=4, n_val=1, n_test=1, n_test_novel=1)
        >>> s = generate_split(cfg, "train")
        >>> len(s), s.images.shape[1:], len(s.captions[0])
        (4, (48, 48, 3), 5)
    """
    n = config.size(split)
    rng = np.random.default_rng([config.seed, SPLITS.index(split)])
    labels = digit_scans()[1]
    pools = scan_pools(labels, config.scan_fractions, np.random.default_rng([config.seed, 99]))
    pool = pools[_SCAN_POOL[split]]

    n_objects, combos = _sample_objects(config, split, n, rng)
    axis = rng.integers(0, len(RELATIONS), size=n)
    if config.repeats_in(split):
        _repeat_configurations(config, split, n_objects, combos, axis)
    present = combos >= 0
    digits = np.where(present, combos // len(COLOURS), -1)
    colours = np.where(present, combos % len(COLOURS), -1)
    scan_indices = np.full((n, 3), -1, dtype=np.int64)
    pick = rng.random((n, 3))
    for digit in range(10):
        sel = digits == digit
        members = pool[digit]
        scan_indices[sel] = members[np.floor(pick[sel] * len(members)).astype(np.int64)]

    x0, y0, size = layout_boxes(n_objects, axis, config.canvas, config.jitter, rng)
    images, boxes = rasterise(
        scan_indices, colours, x0, y0, size, config.canvas, config.noise_std, rng
    )

    rnd = random.Random(int(rng.integers(2**62)))
    allowed = _allowed(config, split).tolist()
    relations = [RELATIONS[a] for a in axis.tolist()]
    captions, negatives, ids = [], [], []
    for i in range(n):
        k = int(n_objects[i])
        d, c, b = digits[i, :k].tolist(), colours[i, :k].tolist(), boxes[i, :k].tolist()
        caps, negs = scene_captions(relations[i], d, c, b, allowed, config.n_captions, rnd)
        captions.append(caps)
        negatives.append(negs)
        ids.append(semantic_id(relations[i], d, c))
    # a stream of their own: the captions and hard negatives above do not depend on them
    prnd = random.Random(
        int(np.random.default_rng([config.seed, SPLITS.index(split), 1]).integers(2**62))
    )
    partial = [
        partial_captions(digits[i, :k].tolist(), colours[i, :k].tolist(), prnd)
        for i, k in enumerate(n_objects.tolist())
    ]
    return SceneSplit(
        name=split,
        images=images,
        captions=captions,
        partial_captions=partial,
        semantic_ids=np.asarray(ids, dtype=np.int64),
        digits=digits.astype(np.int64),
        colours=colours.astype(np.int64),
        boxes=boxes,
        relations=relations,
        hard_negatives=negatives,
        scan_indices=scan_indices,
    )


def generate_digitscenes(
    config: DigitScenesConfig, splits: Iterable[str] = SPLITS
) -> dict[str, SceneSplit]:
    """Generate splits in memory, without any cache (see :func:`load_digitscenes`)."""
    return {name: generate_split(config, check_split(name)) for name in splits}
