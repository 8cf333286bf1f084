"""Image files → (3, S, S) float tensors: the one resize + crop and decode path of every source.

Karpathy JSON, CSV, ``datasets`` and compositional-probe sources all read images from disk
(or from bytes embedded in an Arrow file) and hand the model the same square tensor, so they
share :func:`resize_center_crop` and :func:`read_image`; a damaged file fails with one error
that names where it came from.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["read_image", "resize_center_crop"]


def resize_center_crop(image: Image.Image, size: int) -> Tensor:
    """Resize the short side to ``size`` (bicubic), center-crop, return (3, size, size) in [0, 1].

    Example:
        >>> resize_center_crop(Image.new("RGB", (40, 20), (255, 0, 0)), 10)[:, 0, 0]
        tensor([1., 0., 0.])
    """
    image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255


def read_image(source: str | os.PathLike | bytes, size: int, where: str) -> Tensor:
    """Decode an image file (a path or its bytes) into a (3, size, size) tensor in [0, 1].

    Args:
        source: the file's path, or its encoded bytes (PNG, JPEG, …).
        size: output side (short side resized, then center crop).
        where: what the image is, for the error message (e.g. ``"x.csv line 3"``).

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        ValueError: the file is corrupt or truncated (message names ``where`` and the path).

    Example:
        >>> buf = io.BytesIO(); Image.new("RGB", (8, 8), (0, 0, 255)).save(buf, "PNG")
        >>> read_image(buf.getvalue(), 4, "demo")[:, 0, 0]
        tensor([0., 0., 1.])
    """
    is_bytes = isinstance(source, bytes | bytearray)
    name = "embedded image bytes" if is_bytes else f"image file {source}"
    if not is_bytes and not os.path.isfile(source):
        raise FileNotFoundError(f"{name} ({where}) does not exist; check the path / image root")
    try:
        with Image.open(io.BytesIO(source) if is_bytes else source) as image:
            return resize_center_crop(image, size)
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for a damaged file
        raise ValueError(
            f"{name} ({where}) is corrupt or truncated ({type(err).__name__}: {err}); "
            "re-download or re-encode it"
        ) from err
