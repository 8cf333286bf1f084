"""DigitScenes: a compositional image–caption benchmark built from real handwritten digit scans.

See the README's DigitScenes paragraph. Each scene holds 2–3 tinted digit scans in a row or
a column; annotations give digits, colours, boxes, the relation and a semantics id (equal iff
the canonical description is equal, so equal-id scenes are each other's false negatives), 5
paraphrased captions, one partial caption per object ("a red 3", true of every scene holding
that object: the benchmark's false negatives) and up to 5 hard negatives with their mismatch
word span and box.

Splits: ``train``, ``val``, ``test`` draw from disjoint pools of scans (by scan index) and
never show the held-out (digit, colour) combinations, not even in hard-negative text;
``test_novel`` scenes (test scans) each contain at least one held-out combination.
Generation is deterministic from the config; :func:`load_digitscenes` caches each split as one
``.npz`` (written to a temp file and atomically renamed) under a directory keyed by the
config's fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hardneg.data.atomic_files import atomic_write
from hardneg.data.dataset import ImageCaptionDataset
from hardneg.data.scene_captions import (
    COLOURS,
    MIN_TEMPLATES,
    N_COMBOS,
    PERTURBATIONS,
    RELATIONS,
    HardNegative,
    partial_captions,
    scene_captions,
    semantic_id,
)
from hardneg.data.scene_render import digit_scans, layout_boxes, rasterise, scan_pools

__all__ = [
    "PERTURBATIONS",
    "PRESETS",
    "SPLITS",
    "DigitScenesConfig",
    "DigitScenesDataset",
    "HardNegative",
    "SceneSplit",
    "default_cache_dir",
    "generate_digitscenes",
    "generate_split",
    "load_digitscenes",
    "read_split",
    "split_path",
]

SPLITS: tuple[str, ...] = ("train", "val", "test", "test_novel")
GENERATOR_VERSION = 2  # bump when generation changes, so old caches are not reused
_SCAN_POOL = {"train": 0, "val": 1, "test": 2, "test_novel": 2}
# one held-out colour per digit: 0 red, 1 green, 2 blue, 3 yellow, 4 magenta, 5 cyan, 6 red, …
DEFAULT_NOVEL_COMBOS: tuple[tuple[int, int], ...] = tuple((d, d % len(COLOURS)) for d in range(10))


@dataclass(frozen=True)
class DigitScenesConfig:
    """Sizes and knobs of a DigitScenes build.

    Args:
        n_train, n_val, n_test, n_test_novel: scenes per split.
        canvas: image side in pixels (≥ 24).
        seed: master seed; every split has its own stream derived from it.
        p_three: probability that a scene has 3 objects (else 2).
        n_captions: positive captions per scene (1–6).
        noise_std: Gaussian pixel noise in uint8 units (0 = clean).
        jitter: max offset (px) from the centre across the layout axis.
        scan_fractions: share of each digit's scans in the train / val / test pools.
        novel_combos: (digit, colour index) combinations held out of train/val/test and
            required in test_novel.
        repeated_configs, repeats: the train split shows ``repeated_configs`` scene
            configurations (objects, colours, relation) in ``repeats`` scenes each, with new
            scans, layout, noise and caption templates every time (0, 0: none). Their captions
            are true of each other's images, so in a random batch a repeated scene meets its
            false negatives at the rate ``G k (k − 1) / (N (N − 1))`` of the ordered pairs (G
            configurations, k repeats, N train scenes), like the near-duplicates of web data.

    Example:
        >>> DigitScenesConfig(n_train=10, n_val=2, n_test=2, n_test_novel=2).size("val")
        2
    """

    n_train: int = 6000
    n_val: int = 500
    n_test: int = 1000
    n_test_novel: int = 1000
    canvas: int = 48
    seed: int = 0
    p_three: float = 0.5
    n_captions: int = 5
    noise_std: float = 6.0
    jitter: int = 3
    scan_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    novel_combos: tuple[tuple[int, int], ...] = DEFAULT_NOVEL_COMBOS
    repeated_configs: int = 0
    repeats: int = 0

    def __post_init__(self) -> None:
        # YAML gives lists; store tuples so the config stays hashable and fingerprints agree
        object.__setattr__(self, "scan_fractions", tuple(float(f) for f in self.scan_fractions))
        object.__setattr__(
            self, "novel_combos", tuple(tuple(int(v) for v in c) for c in self.novel_combos)
        )
        for split in SPLITS:
            value = getattr(self, f"n_{split}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"n_{split} must be an int ≥ 0, got {value!r}")
        if not isinstance(self.canvas, int) or self.canvas < 24:
            raise ValueError(f"canvas must be an int ≥ 24 pixels, got {self.canvas!r}")
        if not 0.0 <= self.p_three <= 1.0:
            raise ValueError(f"p_three must be a probability in [0, 1], got {self.p_three!r}")
        if not 1 <= self.n_captions <= MIN_TEMPLATES:
            raise ValueError(
                f"n_captions must be in [1, {MIN_TEMPLATES}] (distinct templates per scene), "
                f"got {self.n_captions!r}"
            )
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std must be ≥ 0 (0 = clean images), got {self.noise_std!r}")
        if not isinstance(self.jitter, int) or self.jitter < 0:
            raise ValueError(f"jitter must be an int ≥ 0 pixels, got {self.jitter!r}")
        fractions = self.scan_fractions
        if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(
                f"scan_fractions must be 3 positive shares (train, val, test) summing to 1, "
                f"got {fractions!r}"
            )
        combos = self.novel_combos
        bad = [c for c in combos if len(c) != 2 or not (0 <= c[0] < 10 and 0 <= c[1] < 6)]
        if bad or len(set(combos)) != len(combos):
            raise ValueError(
                f"novel_combos must be distinct (digit 0–9, colour 0–5) pairs, bad: {bad or combos}"
            )
        if (self.n_test_novel > 0 and not combos) or len(combos) > N_COMBOS - 10:
            raise ValueError(
                f"novel_combos has {len(combos)} pairs: hold out at least one (for test_novel) "
                f"and at most {N_COMBOS - 10} so that train keeps enough combinations"
            )

        for name in ("repeated_configs", "repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int ≥ 0, got {value!r}")
        if (self.repeated_configs == 0) != (self.repeats == 0):
            raise ValueError(
                f"repeated_configs={self.repeated_configs} and repeats={self.repeats}: set both "
                "(configurations, scenes each) or neither"
            )
        if self.repeated_configs * self.repeats > self.n_train:
            raise ValueError(
                f"repeated_configs × repeats = {self.repeated_configs * self.repeats} scenes, "
                f"more than n_train={self.n_train}; lower them or raise n_train"
            )

    def size(self, split: str) -> int:
        """Number of scenes of ``split``."""
        return int(getattr(self, f"n_{_check_split(split)}"))

    def fingerprint(self) -> str:
        """12-hex-digit hash of every field and the generator version (the cache key). The
        repeat fields count only when set, so builds without repeats keep their cache."""
        fields = dataclasses.asdict(self)
        if not self.repeats:
            del fields["repeated_configs"], fields["repeats"]
        payload = json.dumps({"version": GENERATOR_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


PRESETS: dict[str, DigitScenesConfig] = {
    "tiny": DigitScenesConfig(n_train=300, n_val=60, n_test=100, n_test_novel=100),
    "small": DigitScenesConfig(n_train=2000, n_val=200, n_test=500, n_test_novel=500),
    "quick": DigitScenesConfig(n_train=6000, n_val=500, n_test=1000, n_test_novel=1000),
    "full": DigitScenesConfig(n_train=50000, n_val=2000, n_test=5000, n_test_novel=5000),
}


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are {', '.join(SPLITS)}")
    return split


@dataclass
class SceneSplit:
    """One generated DigitScenes split. Objects are in reading order; absent ones are -1.

    Attributes:
        name: split name (one of :data:`SPLITS`).
        images: (N, H, W, 3) uint8.
        captions: N lists of positive captions.
        partial_captions: N lists of one caption per object naming that object only, aligned
            with the objects (true of every scene holding it; see
            :func:`~hardneg.data.scene_captions.partial_captions`).
        semantic_ids: (N,) int64; equal iff the canonical descriptions are equal.
        digits: (N, 3) int64 digit of each object.
        colours: (N, 3) int64 index into :data:`~hardneg.data.scene_captions.COLOURS`.
        boxes: (N, 3, 4) int64 ``(x0, y0, x1, y1)`` tight ink box, x1/y1 exclusive.
        relations: N relation names: ``"left_of"`` (objects left → right) or ``"above"``.
        hard_negatives: N lists of :class:`HardNegative`, in :data:`PERTURBATIONS` order.
        scan_indices: (N, 3) int64 index of each object's scan in ``load_digits()``.
    """

    name: str
    images: np.ndarray
    captions: list[list[str]]
    partial_captions: list[list[str]]
    semantic_ids: np.ndarray
    digits: np.ndarray
    colours: np.ndarray
    boxes: np.ndarray
    relations: list[str]
    hard_negatives: list[list[HardNegative]]
    scan_indices: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be (N, H, W, 3) uint8, got {self.images.shape} {self.images.dtype}"
            )
        sizes = {
            "captions": len(self.captions),
            "partial_captions": len(self.partial_captions),
            "semantic_ids": len(self.semantic_ids),
            "digits": len(self.digits),
            "colours": len(self.colours),
            "boxes": len(self.boxes),
            "relations": len(self.relations),
            "hard_negatives": len(self.hard_negatives),
            "scan_indices": len(self.scan_indices),
        }
        wrong = {k: v for k, v in sizes.items() if v != n}
        if wrong:
            raise ValueError(f"SceneSplit fields must all have {n} rows (images); got {wrong}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_objects(self) -> np.ndarray:
        """(N,) number of objects per scene."""
        return (self.digits >= 0).sum(axis=1)


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
    config: DigitScenesConfig, n_objects: np.ndarray, combos: np.ndarray, axis: np.ndarray
) -> None:
    """Give ``config.repeats`` random train scenes each of ``config.repeated_configs`` new
    configurations (in place), from a stream of their own: the other scenes keep theirs."""
    rng = np.random.default_rng([config.seed, SPLITS.index("train"), 2])
    g, k = config.repeated_configs, config.repeats
    while True:  # G distinct configurations (two equal ones would double the rate)
        g_objects, g_combos = _sample_objects(config, "train", g, rng)
        g_axis = rng.integers(0, len(RELATIONS), size=g)
        if len({(int(a), *c.tolist()) for a, c in zip(g_axis, g_combos)}) == g:
            break
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
    if split == "train" and config.repeats:
        _repeat_configurations(config, n_objects, combos, axis)
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
    return {name: generate_split(config, _check_split(name)) for name in splits}


# ---------------------------------------------------------------- cache files
_ARRAYS = ("images", "semantic_ids", "digits", "colours", "boxes", "scan_indices")


def default_cache_dir() -> Path:
    """``$HARDNEG_CACHE_DIR`` if set, else ``~/.cache/hardneg``."""
    return Path(os.environ.get("HARDNEG_CACHE_DIR", Path.home() / ".cache" / "hardneg"))


def split_path(config: DigitScenesConfig, split: str, cache_dir: str | os.PathLike) -> Path:
    """Cache file of a split: ``<cache_dir>/digitscenes-<config fingerprint>/<split>.npz``."""
    return Path(cache_dir) / f"digitscenes-{config.fingerprint()}" / f"{_check_split(split)}.npz"


def _write_split(split: SceneSplit, path: Path) -> None:
    meta = {
        "name": split.name,
        "captions": split.captions,
        "partial_captions": split.partial_captions,
        "relations": split.relations,
        "hard_negatives": [
            [[h.caption, h.kind, *h.span, *h.box, h.source, h.semantic_id] for h in negs]
            for negs in split.hard_negatives
        ],
    }
    meta_bytes = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    arrays = {name: getattr(split, name) for name in _ARRAYS}
    atomic_write(path, lambda f: np.savez(f, meta_json=meta_bytes, **arrays))


def read_split(path: str | os.PathLike) -> SceneSplit:
    """Read a split written by :func:`load_digitscenes`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated or corrupt (message names it and says what to do).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no DigitScenes split file at {path}; generate it first")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in _ARRAYS}
            meta = json.loads(data["meta_json"].tobytes().decode())
        negatives = [
            [
                HardNegative(
                    caption=r[0],
                    kind=r[1],
                    span=(r[2], r[3]),
                    box=(r[4], r[5], r[6], r[7]),
                    source=r[8],
                    semantic_id=r[9],
                )
                for r in negs
            ]
            for negs in meta["hard_negatives"]
        ]
        return SceneSplit(
            name=meta["name"],
            captions=meta["captions"],
            partial_captions=meta["partial_captions"],
            relations=meta["relations"],
            hard_negatives=negatives,
            **arrays,
        )
    except (
        zipfile.BadZipFile,
        OSError,
        EOFError,
        KeyError,
        ValueError,
        IndexError,
        TypeError,
    ) as err:
        raise ValueError(
            f"DigitScenes cache file {path} is corrupt or truncated ({type(err).__name__}: "
            f"{err}); delete it or call load_digitscenes(..., regenerate=True)"
        ) from err


def load_digitscenes(
    config: DigitScenesConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    splits: Iterable[str] = SPLITS,
    regenerate: bool = False,
) -> dict[str, SceneSplit]:
    """Load DigitScenes splits from the cache, generating (and caching) missing ones.

    A corrupt or truncated cache file is regenerated with a warning; ``regenerate=True``
    rebuilds every requested split. Files are written to a temp file and atomically renamed,
    so an interrupted run never leaves a half-written split.

    Args:
        config: the build (default ``PRESETS["quick"]``).
        cache_dir: cache root (default :func:`default_cache_dir`); the files go to
            ``<cache_dir>/digitscenes-<fingerprint>/``.
        splits: which splits to load.
        regenerate: ignore existing files.

    Returns:
        ``{split name: SceneSplit}``.

    Example:
        >>> import tempfile
        >>> cfg = DigitScenesConfig(n_train=8, n_val=2, n_test=2, n_test_novel=2)
        >>> data = load_digitscenes(cfg, tempfile.mkdtemp(), splits=["train", "test_novel"])
        >>> {k: len(v) for k, v in data.items()}
        {'train': 8, 'test_novel': 2}
    """
    config = PRESETS["quick"] if config is None else config
    if not isinstance(config, DigitScenesConfig):
        raise ValueError(
            f"config must be a DigitScenesConfig (or None for the quick preset), got "
            f"{type(config).__name__}; see hardneg.data.digitscenes.PRESETS"
        )
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    splits = [_check_split(s) for s in ([splits] if isinstance(splits, str) else splits)]
    out: dict[str, SceneSplit] = {}
    for name in splits:
        path = split_path(config, name, cache_dir)
        if path.is_file() and not regenerate:
            try:
                out[name] = read_split(path)
                continue
            except ValueError as err:
                warnings.warn(f"{err}; regenerating it", RuntimeWarning, stacklevel=2)
        out[name] = generate_split(config, name)
        _write_split(out[name], path)
    config_file = cache_dir / f"digitscenes-{config.fingerprint()}" / "config.json"
    if out and not config_file.is_file():
        text = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(config)}, indent=2)
        atomic_write(config_file, lambda f: f.write(text.encode()))
    return out


class DigitScenesDataset(ImageCaptionDataset):
    """A :class:`SceneSplit` as an :class:`~hardneg.data.dataset.ImageCaptionDataset`.

    Items: ``{"image": (3, H, W) float in [0, 1], "captions": 5 positives, "semantic_id",
    "index"}``; hard negatives stay on :attr:`split` (``split.hard_negatives[index]``).

    Args:
        split: a generated or loaded split.
        transform: optional callable on the image tensor.

    Example:
        >>> cfg = DigitScenesConfig(n_train=3, n_val=1, n_test=1, n_test_novel=1)
        >>> ds = DigitScenesDataset(generate_split(cfg, "train"))
        >>> tuple(ds[0]["image"].shape), len(ds)
        ((3, 48, 48), 3)
    """

    def __init__(
        self, split: SceneSplit, transform: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        super().__init__(transform)
        if not isinstance(split, SceneSplit):
            raise ValueError(
                f"split must be a SceneSplit (from load_digitscenes), got {type(split).__name__}"
            )
        self.split = split
        self.captions = split.captions
        self.semantic_ids = split.semantic_ids

    def load_image(self, index: int) -> Tensor:
        """Scene ``index`` as a float (3, H, W) tensor in [0, 1]."""
        return torch.from_numpy(self.split.images[index]).permute(2, 0, 1).float().div(255.0)
