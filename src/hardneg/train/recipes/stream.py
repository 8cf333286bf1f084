"""Streaming webdataset shards (``--data wds:PATTERN``) as a recipe of the training engine.

Each rank reads its own shards (:class:`~hardneg.data.wds_source.WebDatasetSource`: every shard
by exactly one (rank, dataloader worker), every sample once per epoch) and trains on its local
``batch_size / world`` samples per step; the losses gather features from every rank, so the
negatives are global as with map-style data. An epoch has as many steps as the rank with the
fewest samples can fill (the other ranks' tails are dropped, so every rank steps together).

- Positives: a sample's id is a 63-bit hash of its key (captions of one key are positives).
- Batches are random (the shard order and the samples' tar order): GRIT and FALCON need random
  access to build their search spaces and are refused on a stream (use a map-style source).
- Resume is at shard granularity: a checkpoint holds the shards every rank finished; a resumed
  run reads the unfinished ones, a partly read shard again from its start (so the figures of a
  resumed stream run are not bit-identical to an uninterrupted run's, unlike map-style data).
"""

from __future__ import annotations

import hashlib
import tarfile
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader

from hardneg.data.wds_source import IMAGE_EXTENSIONS, WebDatasetSource
from hardneg.models.inputs import Images
from hardneg.train.batch import Batch, StepDraw
from hardneg.train.config import TrainConfig
from hardneg.train.recipes.files import FilesRecipe, pick


def key_id(key: str) -> int:
    """A 63-bit id of a sample key (equal keys ⇒ equal ids ⇒ positives)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 1


def count_samples(path) -> int:
    """Samples (members with an image extension) of one shard, from the tar headers only."""
    with tarfile.open(path) as tar:
        return sum(m.name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS for m in tar)


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "caption": [s["caption"] for s in samples],
        "key": [s["key"] for s in samples],
        "shard": [s["shard"] for s in samples],
        "shard_end": [s["shard_end"] for s in samples],
    }


class StreamBatches:
    """The engine's batch sampler on a stream: one placeholder global batch per step, while the
    stream's local batch (:attr:`current`) holds this rank's samples (see module docstring)."""

    def __init__(self, source: WebDatasetSource, cfg: TrainConfig, world: int) -> None:
        self.source, self.world = source, world
        self.batch_size, self.local = cfg.batch_size, cfg.batch_size // world
        self.workers = cfg.data.workers
        self.last_batch_stats: dict[str, float] = {}
        self.current: dict[str, Any] | None = None
        counts = [count_samples(p) for p in source.shards]
        per_rank = [
            sum(counts[s] for s in range(len(counts)) if s % world == r) for r in range(world)
        ]
        # an estimate of an epoch's steps (for the curriculum's progress): the epoch's shard
        # order decides which rank reads which shard, so the loop also stops when any rank
        # runs out (see __iter__)
        self.steps = max(1, min(per_rank) // self.local)

    def set_epoch(self, epoch: int) -> None:
        self.source.set_epoch(epoch)

    def __len__(self) -> int:
        return self.steps

    def _all_have(self, have: bool) -> bool:
        if self.world == 1:
            return have
        flag = torch.tensor([int(have)])
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def __iter__(self):
        loader = DataLoader(
            self.source,
            batch_size=self.local,
            num_workers=self.workers,
            collate_fn=_collate,
            drop_last=True,
        )
        for batch in loader:
            if not self._all_have(True):
                break
            self.current = batch
            yield list(range(self.batch_size))
        else:
            self._all_have(False)  # tell the ranks still reading that this one ran out
        self.current = None

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()  # a collective under DDP

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)


class StreamRecipe(FilesRecipe):
    """:class:`FilesRecipe` on ``wds:PATTERN`` shards (see the module docstring)."""

    def _train_source(self) -> WebDatasetSource:
        from hardneg.losses.distributed import world_info

        rank, world = world_info()
        source = WebDatasetSource(self.cfg.data.dataset, self.image_size, seed=self.cfg.seed)
        self.batch_sampler = StreamBatches(source, self.cfg, world)
        self.rank, self.world = rank, world
        return source

    def train_size(self) -> int:
        return self.batch_sampler.steps * self.cfg.batch_size

    def semantic_ids(self) -> None:
        """None: the batch diagnostics do not count meanings here."""
        return None

    def draw(self, index: Tensor, step: int) -> StepDraw:
        """This rank's samples of the step (captions tokenized, hard negatives, MLM targets)."""
        samples = self.batch_sampler.current
        assert samples is not None, "draw() is called for the batch the stream just yielded"
        self.dataset.record(samples)  # trained before the next checkpoint
        captions = samples["caption"]
        payload = self._captions(
            captions, step, lambda caps: [self._stream_negative(c, caps) for c in caps]
        )
        payload["ids"] = torch.tensor([key_id(k) for k in samples["key"]])
        payload["images"] = samples["image"]
        return StepDraw(index, None, payload)

    def _stream_negative(self, caption: str, batch: list[str]) -> str:
        options = self.perturbed(caption)
        if options:
            return options[pick(len(options), self.caption_gen)]
        others = [c for c in batch if c != caption] or batch
        return others[pick(len(others), self.caption_gen)]

    def batch(self, draw: StepDraw, part: slice, rank: int, world: int) -> Batch:
        p, device = draw.payload, self.device
        index = draw.index[part]
        local = slice(part.start // world, part.stop // world)  # this rank's rows of the part
        text = self._shard_texts(p["text"], local, slice(None), device)
        hard = self._shard_texts(p["hard"], local, slice(None), device) if "hard" in p else None
        chosen = p["mlm_chosen"][local]
        count = chosen.sum().to(device)
        if world > 1:  # the micro-batch's global number of MLM targets
            dist.all_reduce(count)
        return Batch(
            index=index,
            local=torch.arange(local.start, local.stop),
            ids=p["ids"][local].to(device),
            images=Images(pixels=p["images"][local].to(device)),
            text=text,
            mlm_chosen=chosen[:, : text.mask.shape[1]].to(device),
            mlm_targets=count.clamp_min(1).float() / world,
            hard_text=hard,
        )

    def embed_untrained(self, index: Tensor) -> tuple[Tensor, Tensor]:
        raise RuntimeError("a stream has no random access (GRIT / FALCON are refused on wds)")
