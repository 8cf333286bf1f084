"""Pixels of DigitScenes: real digit scans, placed in grid cells, tinted, with light noise.

Scans are scikit-learn's bundled handwritten digits (``load_digits``: 1797 real 8×8 scans,
no download). A scene with ``n`` objects along an axis cuts the canvas into ``n`` equal cells on
that axis; object ``k`` is an upscaled scan inside cell ``k`` and roughly centred across the
axis, so "left of" / "above" relations between objects are unambiguous.
All scenes of a chunk are rasterised at once with array indexing.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["COLOUR_RGB", "digit_scans", "layout_boxes", "rasterise", "scan_pools"]

# pure RGB tints in COLOURS order: red, green, blue, yellow, magenta, cyan
COLOUR_RGB = np.array(
    [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=np.float32
)
_INK_THRESHOLD = 0.05  # upscaled ink below this (fraction of full ink) is background
_CHUNK = 1024  # scenes rasterised per float32 buffer (1024 · 48² · 3 · 4 B ≈ 28 MB)


@lru_cache(maxsize=1)
def digit_scans() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 scikit-learn digit scans as ``(images (1797, 8, 8) float32 in [0, 1], labels)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def scan_pools(
    labels: np.ndarray, fractions: tuple[float, ...], rng: np.random.Generator
) -> list[list[np.ndarray]]:
    """Split scan indices disjointly, per digit class, by ``fractions``.

    Args:
        labels: (S,) digit label of each scan.
        fractions: share of each class's scans per pool (e.g. train, val, test), summing to 1.
        rng: random stream for the per-class shuffle.

    Returns:
        ``pools[p][digit]``: sorted scan indices of that digit in pool ``p``; pools are
        disjoint and each is non-empty.

    Example:
        >>> pools = scan_pools(np.array([0, 0, 1, 1]), (0.5, 0.5), np.random.default_rng(0))
        >>> sorted(np.concatenate(pools[0]).tolist() + np.concatenate(pools[1]).tolist())
        [0, 1, 2, 3]
    """
    pools: list[list[np.ndarray]] = [[] for _ in fractions]
    bounds = np.cumsum((0.0, *fractions))
    for digit in range(int(labels.max()) + 1):
        members = rng.permutation(np.flatnonzero(labels == digit))
        cuts = np.round(bounds * len(members)).astype(int)
        for p in range(len(fractions)):
            part = np.sort(members[cuts[p] : cuts[p + 1]])
            if len(part) == 0:
                raise ValueError(
                    f"scan_fractions {fractions} leave pool {p} without any scan of digit "
                    f"{digit}; make every fraction at least 0.02"
                )
            pools[p].append(part)
    return pools


def layout_boxes(
    n_objects: np.ndarray, axis: np.ndarray, canvas: int, jitter: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Square placement of every object: cell ``k`` of ``n`` along the axis, jittered across it.

    Object size is uniform in ``[⌈0.6·L⌉, ⌊0.9·L⌋]`` with cell length ``L = canvas // n``;
    its offset in the cell is uniform; across the axis it is centred ± ``jitter`` px.

    Args:
        n_objects: (N,) 2 or 3 per scene.
        axis: (N,) 0 = objects left → right, 1 = top → bottom.
        canvas: canvas side in pixels.
        jitter: max offset from the centre across the axis, in pixels.
        rng: random stream.

    Returns:
        ``(x0, y0, size)``, each (N, 3) int64, -1 where a scene has fewer objects.
    """
    n = len(n_objects)
    k = np.broadcast_to(np.arange(3), (n, 3))
    present = k < n_objects[:, None]
    cell = canvas // n_objects[:, None]
    lo, hi = np.ceil(0.6 * cell).astype(np.int64), np.floor(0.9 * cell).astype(np.int64)
    size = lo + np.floor(rng.random((n, 3)) * (hi - lo + 1)).astype(np.int64)
    along = k * cell + np.floor(rng.random((n, 3)) * (cell - size + 1)).astype(np.int64)
    across = (canvas - size) // 2 + rng.integers(-jitter, jitter + 1, size=(n, 3))
    across = np.clip(across, 0, canvas - size)
    horizontal = (axis == 0)[:, None]
    x0 = np.where(horizontal, along, across)
    y0 = np.where(horizontal, across, along)
    return tuple(np.where(present, v, -1) for v in (x0, y0, size))


@lru_cache(maxsize=64)
def _upscaled(size: int) -> tuple[np.ndarray, np.ndarray]:
    """All scans bilinearly upscaled to ``size``², faint ink zeroed, and their ink boxes."""
    scans = torch.from_numpy(digit_scans()[0])[:, None]
    up = F.interpolate(scans, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    up = up.numpy()
    up[up < _INK_THRESHOLD] = 0.0
    rows, cols = up.any(axis=2), up.any(axis=1)
    ink_box = np.stack(
        [
            cols.argmax(1),
            rows.argmax(1),
            size - cols[:, ::-1].argmax(1),
            size - rows[:, ::-1].argmax(1),
        ],
        axis=1,
    )
    return up, ink_box


def rasterise(
    scan_index: np.ndarray,
    colours: np.ndarray,
    x0: np.ndarray,
    y0: np.ndarray,
    size: np.ndarray,
    canvas: int,
    noise_std: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the scenes: each object = upscaled scan × intensity × colour, plus Gaussian noise.

    Pixel value ``255 · ink · intensity · rgb(colour) + 𝒩(0, noise_std²)``, clipped and rounded
    to uint8; intensity ~ U(0.7, 1) per object. Boxes are the tight box of the object's ink.

    Args:
        scan_index, colours, x0, y0, size: (N, 3) per object, -1 where absent.
        canvas: canvas side.
        noise_std: noise standard deviation in uint8 units (0 = clean images).
        rng: random stream.

    Returns:
        ``(images (N, canvas, canvas, 3) uint8, boxes (N, 3, 4) int64 x0, y0, x1, y1)``
        with x1/y1 exclusive and -1 rows for absent objects.
    """
    n = len(scan_index)
    present = scan_index >= 0
    intensity = rng.uniform(0.7, 1.0, size=scan_index.shape).astype(np.float32)
    boxes = np.full((n, 3, 4), -1, dtype=np.int64)
    for s in np.unique(size[present]):
        up, ink_box = _upscaled(int(s))
        sel = present & (size == s)
        offset = np.stack([x0[sel], y0[sel], x0[sel], y0[sel]], axis=1)
        boxes[sel] = ink_box[scan_index[sel]] + offset
    images = np.empty((n, canvas, canvas, 3), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        buf = np.zeros((stop - start, canvas, canvas, 3), dtype=np.float32)
        for s in np.unique(size[start:stop][present[start:stop]]):
            up, _ = _upscaled(int(s))
            scene, obj = np.nonzero(present[start:stop] & (size[start:stop] == s))
            g = (scene + start, obj)
            ar = np.arange(s)
            ys = y0[g][:, None, None] + ar[None, :, None]
            xs = x0[g][:, None, None] + ar[None, None, :]
            ink = up[scan_index[g]] * (255.0 * intensity[g])[:, None, None]
            stamp = ink[..., None] * COLOUR_RGB[colours[g]][:, None, None, :]
            buf[scene[:, None, None], ys, xs] = stamp  # objects' cells are disjoint
        if noise_std > 0:
            buf += rng.standard_normal(buf.shape, dtype=np.float32) * np.float32(noise_std)
        images[start:stop] = np.clip(np.rint(buf), 0, 255).astype(np.uint8)
    return images, boxes
