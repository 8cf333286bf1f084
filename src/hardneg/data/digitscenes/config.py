"""The knobs of a DigitScenes build: :class:`DigitScenesConfig`, its :data:`PRESETS` and the
:data:`SPLITS`.

A config fixes a build completely (generation is deterministic in it); its
:meth:`~DigitScenesConfig.fingerprint` keys the on-disk cache
(:mod:`hardneg.data.digitscenes.store`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from hardneg.data.digitscenes.captions import MIN_TEMPLATES
from hardneg.data.digitscenes.semantics import COLOURS, N_COMBOS

__all__ = [
    "DEFAULT_NOVEL_COMBOS",
    "GENERATOR_VERSION",
    "PRESETS",
    "SPLITS",
    "DigitScenesConfig",
    "check_split",
]

SPLITS: tuple[str, ...] = ("train", "val", "test", "test_novel")
GENERATOR_VERSION = 2  # bump when generation changes, so old caches are not reused
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
        test_repeats: the test split shows the same ``repeated_configs`` configurations in
            ``test_repeats`` scenes each (0: none), so that retrieval, which counts a caption
            relevant to every scene it is true of, makes a model pay for pushing duplicates
            apart. ``val`` and ``test_novel`` never repeat (test_novel's scenes must each hold
            a held-out combination, which train's configurations never do).

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
    test_repeats: int = 0

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

        for name in ("repeated_configs", "repeats", "test_repeats"):
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
        test_scenes = self.repeated_configs * self.test_repeats
        if self.test_repeats and not 0 < test_scenes <= self.n_test:
            raise ValueError(
                f"test_repeats={self.test_repeats} needs repeated_configs ≥ 1 (it repeats train's "
                f"configurations) and repeated_configs × test_repeats ≤ n_test={self.n_test}"
            )

    def size(self, split: str) -> int:
        """Number of scenes of ``split``."""
        return int(getattr(self, f"n_{check_split(split)}"))

    def repeats_in(self, split: str) -> int:
        """Scenes of ``split`` given each repeated configuration (0: the split repeats none)."""
        return {"train": self.repeats, "test": self.test_repeats}.get(check_split(split), 0)

    def fingerprint(self) -> str:
        """12-hex-digit hash of every field and the generator version (the cache key). The
        repeat fields count only when set, so builds without repeats keep their cache (and
        builds that repeat configurations in the test split get a key of their own)."""
        fields = dataclasses.asdict(self)
        if not self.repeats:
            del fields["repeated_configs"], fields["repeats"]
        if not self.test_repeats:
            del fields["test_repeats"]
        payload = json.dumps({"version": GENERATOR_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


PRESETS: dict[str, DigitScenesConfig] = {
    "tiny": DigitScenesConfig(n_train=300, n_val=60, n_test=100, n_test_novel=100),
    "small": DigitScenesConfig(n_train=2000, n_val=200, n_test=500, n_test_novel=500),
    "quick": DigitScenesConfig(n_train=6000, n_val=500, n_test=1000, n_test_novel=1000),
    "full": DigitScenesConfig(n_train=50000, n_val=2000, n_test=5000, n_test_novel=5000),
}


def check_split(split: str) -> str:
    """``split`` if it is one of :data:`SPLITS` (else a ``ValueError`` listing them)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are {', '.join(SPLITS)}")
    return split
