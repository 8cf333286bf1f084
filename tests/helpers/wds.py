"""Webdataset tar shards written for the tests (test helper)."""

from __future__ import annotations

import io
import json
import tarfile

from PIL import Image

SIZES = [3, 4, 2, 5, 3, 4, 2, 3]  # samples per shard
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def _member(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _image_bytes(colour, fmt):
    buf = io.BytesIO()
    Image.new("RGB", (20, 12), colour).save(buf, format=fmt)
    return buf.getvalue()


def write_shards(root, sizes=SIZES, broken_shard=None):
    """``root/shard-00k.tar``; sample j of shard k has key ``k{k}_{j}`` and caption
    ``caption k{k}_{j}``; every third sample is a PNG, one sample per shard has a json."""
    keys = {}
    for k, n in enumerate(sizes):
        keys[k] = []
        with tarfile.open(root / f"shard-{k:03d}.tar", "w") as tar:
            for j in range(n):
                key = f"k{k}_{j}"
                keys[k].append(key)
                fmt, ext = ("PNG", "png") if j % 3 == 2 else ("JPEG", "jpg")
                _member(tar, f"{key}.{ext}", _image_bytes(COLOURS[j % 3], fmt))
                _member(tar, f"{key}.txt", f"caption {key}\n".encode())
                if j == 0:
                    _member(tar, f"{key}.json", json.dumps({"j": j}).encode())
            if k == broken_shard:
                _member(tar, "nocaption.jpg", _image_bytes((0, 0, 0), "JPEG"))
                _member(tar, "badimage.jpg", b"not a jpeg")
                _member(tar, "badimage.txt", b"a caption")
    return keys
