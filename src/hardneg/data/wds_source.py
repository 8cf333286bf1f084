"""Streaming image-caption pairs from webdataset tar shards (``--data wds:PATTERN``).

A shard is a tar file whose members are grouped into samples by key, as open_clip's
``img2dataset`` writes them: ``KEY.jpg`` (or ``png``, ``jpeg``, ``webp``), ``KEY.txt`` (the
caption) and optionally ``KEY.json``; the key is the member path up to the first dot of its
file name, and a sample's members are consecutive. ``PATTERN`` is brace-expanded
(``shards/{000..099}.tar``, the ``braceexpand`` package) into local shard paths.

Splitting: each epoch the shards are put in an order drawn from ``(seed, epoch)``; the shards
not yet finished are dealt round-robin to the ``world_size × num_workers`` (DDP rank,
dataloader worker) slots, so every shard is read by exactly one slot and every sample is seen
once per epoch. Samples within a shard keep their tar order. Ranks may get different numbers
of samples when the shards are uneven; the training loop must equalise (drop the tail).

Resuming is at shard granularity: each sample carries its ``shard`` and ``shard_end`` (True
for the shard's last sample); the loop passes consumed batches to
:meth:`WebDatasetSource.record`, and :meth:`~WebDatasetSource.state_dict` holds the epoch and
the finished shards of every rank. After :meth:`~WebDatasetSource.load_state_dict`, a new
iterator skips the finished shards and reads a partly consumed shard again from its start.

Why ``tarfile`` rather than the ``webdataset`` pipeline: the exact shard → (rank, worker) map
and the shard-level resume state are the point of this module, and webdataset's
``split_by_node``/``split_by_worker`` stages and their defaults changed across its versions;
reading a tar stream sequentially takes a dozen lines of the standard library.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from hardneg.data.karpathy import resize_center_crop
from hardneg.losses.distributed import world_info

__all__ = ["IMAGE_EXTENSIONS", "WebDatasetSource", "parse_wds", "read_shard"]

logger = logging.getLogger(__name__)

#: Member extensions read as the sample's image, in order of preference.
IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "png", "jpeg", "webp")
PREFIX = "wds:"


def parse_wds(spec: str) -> list[Path]:
    """Expand ``wds:PATTERN`` into its shard paths, checking that each one exists.

    Example:
        >>> parse_wds("wds:/no/such/{0..1}.tar")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: --data wds:/no/such/{0..1}.tar: none of the 2 shards exists ...
    """
    from braceexpand import UnbalancedBracesError, braceexpand

    if not isinstance(spec, str) or not spec.startswith(PREFIX) or not spec[len(PREFIX) :]:
        raise ValueError(
            f"--data {spec!r} is not a webdataset spec; use wds:PATTERN, e.g. "
            "wds:/data/shards/{000..099}.tar"
        )
    pattern = spec[len(PREFIX) :]
    try:
        paths = [Path(p) for p in braceexpand(pattern)]
    except UnbalancedBracesError as err:
        raise ValueError(
            f"--data {spec}: unbalanced braces in the pattern ({err}); write ranges as {{000..099}}"
        ) from None
    missing = [p for p in paths if not p.is_file()]
    if len(missing) == len(paths):
        raise FileNotFoundError(
            f"--data {spec}: none of the {len(paths)} shards exists (first: {paths[0]}); check "
            "the path and the {000..099} range"
        )
    if missing:
        raise FileNotFoundError(
            f"--data {spec}: {len(missing)} of {len(paths)} shards are missing (first: "
            f"{missing[0]}); fix the brace range to the shards that exist"
        )
    return paths


def _split_name(name: str) -> tuple[str, str]:
    """``dir/0001.seg.jpg`` → (``dir/0001``, ``seg.jpg``): key up to the file name's first dot."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (ext.lower() if dot else "")


def _grouped(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of consecutive tar members sharing a key."""
    key, parts = None, {}
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name_key, ext = _split_name(member.name)
            if name_key != key and key is not None:
                yield key, parts
                parts = {}
            key = name_key
            handle = tar.extractfile(member)
            parts[ext] = b"" if handle is None else handle.read()
    if key is not None:
        yield key, parts


def read_shard(path: Path, image_size: int, keep_json: bool = False) -> Iterator[dict[str, Any]]:
    """Decoded samples of one shard: ``{"image", "caption", "key"[, "json"]}``.

    Samples without an image or a caption, or whose image does not decode, are skipped with
    one logged warning per shard (as open_clip's loader skips them).
    """
    skipped = 0
    for key, parts in _grouped(path):
        ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
        if ext is None or "txt" not in parts:
            skipped += 1
            continue
        try:
            with Image.open(io.BytesIO(parts[ext])) as image:
                pixels = resize_center_crop(image, image_size)
        except (OSError, ValueError):
            skipped += 1
            continue
        sample: dict[str, Any] = {
            "image": pixels,
            "caption": parts["txt"].decode("utf-8").strip(),
            "key": key,
        }
        if keep_json:
            sample["json"] = json.loads(parts["json"]) if "json" in parts else {}
        yield sample
    if skipped:
        logger.warning(
            "%s: skipped %d samples without a decodable image or a caption", path, skipped
        )


class WebDatasetSource(IterableDataset):
    """Samples of ``wds:PATTERN`` shards, split by shard across DDP ranks and workers.

    Yields ``{"image": FloatTensor(3, S, S) in [0, 1], "caption": str, "key": str, "shard":
    int, "shard_end": bool}`` (plus ``"json"`` with ``keep_json``); ``shard`` indexes the
    expanded pattern. See the module docstring for the splitting and the resume protocol.

    Args:
        spec: ``wds:PATTERN`` (the ``--data`` value); checked at construction.
        image_size: side S of the resized, center-cropped images.
        seed: seed of the per-epoch shard order.
        rank, world_size: DDP position; None: from ``torch.distributed`` at construction
            (workers are separate processes, so it is captured here, not in the worker).
        keep_json: also yield each sample's parsed ``json`` member ({} without one).

    Example:
        >>> source = WebDatasetSource("wds:shards/{000..009}.tar", 224)  # doctest: +SKIP
        >>> loader = DataLoader(source, batch_size=256, num_workers=4)  # doctest: +SKIP
        >>> for batch in loader:  # doctest: +SKIP
        ...     step(batch); source.record(batch)
        >>> torch.save(source.state_dict(), "data_state.pt")  # doctest: +SKIP
    """

    def __init__(
        self,
        spec: str,
        image_size: int,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        keep_json: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be an int ≥ 1, got {image_size!r}")
        here_rank, here_world = world_info()
        self.rank = here_rank if rank is None else rank
        self.world_size = here_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must lie in [0, world_size={self.world_size}), got {rank}")
        self.spec = spec
        self.shards = parse_wds(spec)
        self.image_size = image_size
        self.seed = int(seed)
        self.keep_json = keep_json
        self.epoch = 0
        self.finished: dict[int, set[int]] = {}

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (its own shard order); a new epoch forgets finished shards."""
        if epoch != self.epoch:
            self.finished = {}
        self.epoch = int(epoch)

    def shard_order(self) -> list[int]:
        """This epoch's shard order, the same on every rank and worker."""
        rng = np.random.default_rng([self.seed, self.epoch])
        return [int(i) for i in rng.permutation(len(self.shards))]

    def assigned_shards(self, worker: int = 0, num_workers: int = 1) -> list[int]:
        """Unfinished shards read by (this rank, ``worker``), in reading order."""
        done = set().union(*self.finished.values())
        remaining = [s for s in self.shard_order() if s not in done]
        slots = self.world_size * num_workers
        return remaining[self.rank * num_workers + worker :: slots]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        mine = self.assigned_shards(worker, num_workers)
        if not mine:
            logger.warning(
                "%s: rank %d worker %d has no shard left to read (%d shards for %d slots)",
                self.spec,
                self.rank,
                worker,
                len(self.shards),
                self.world_size * num_workers,
            )
        for shard in mine:
            previous = None
            for sample in read_shard(self.shards[shard], self.image_size, self.keep_json):
                if previous is not None:
                    yield previous
                previous = {**sample, "shard": shard, "shard_end": False}
            if previous is not None:
                yield {**previous, "shard_end": True}

    def record(self, batch: dict[str, Any]) -> None:
        """Mark the shards whose last sample is in ``batch`` (a sample or a collated batch) as
        finished by this rank; call it after the batch was trained on."""
        shards = np.atleast_1d(np.asarray(batch["shard"]))
        ends = np.atleast_1d(np.asarray(batch["shard_end"], dtype=bool))
        self.finished.setdefault(self.rank, set()).update(int(s) for s in shards[ends])

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "seed", "shards", "finished": {rank: [shard, ...]}}``.

        Under ``torch.distributed`` this is a collective (every rank must call it): the
        finished shards of all ranks are gathered, so any rank's copy resumes the whole run.
        """
        finished = {r: sorted(s) for r, s in self.finished.items()}
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, finished)
            finished = {}
            for part in parts:
                for r, shards in part.items():
                    finished[r] = sorted(set(finished.get(r, [])) | set(shards))
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "shards": len(self.shards),
            "finished": finished,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` (create the DataLoader iterator afterwards: persistent
        workers keep the state they started with). The world size may differ."""
        if state.get("shards") != len(self.shards) or state.get("seed") != self.seed:
            raise ValueError(
                f"data state is for {state.get('shards')} shards with seed {state.get('seed')} "
                f"but --data {self.spec} has {len(self.shards)} with seed {self.seed}; resume "
                "with the same --data and seed"
            )
        self.epoch = int(state["epoch"])
        self.finished = {int(r): set(s) for r, s in state["finished"].items()}
