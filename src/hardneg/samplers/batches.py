r"""The batch sampler of GRIT-VLP, FALCON and their heuristic baselines: seven batch modes.

:class:`HardnessBatchSampler` cuts each epoch into search spaces and builds the batches of a
space from cached embeddings, in the mode of its :class:`~hardneg.samplers.batch_config.
HardnessSamplerConfig`: random, GRIT-VLP's alternating hardest chain, a fixed or progressive
hardness quantile, or FALCON's learned quantile (per anchor or per batch).

References: Byun et al. 2022, "GRIT-VLP: Grouped Mini-batch Sampling for Efficient
Vision-Language Pre-training" (``jaeseokbyun/GRIT-VLP``, ``models/GRIT_utils.py``): random search
spaces of the cached embeddings, batches cut from one alternating chain of hardest pairs;
FALCON (arXiv:2505.11192) §3 and its baselines: a chain on the symmetric similarity picking the
candidate at hardness quantile q. The chains themselves are in :mod:`hardneg.samplers.chain`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor
from torch.utils.data import Sampler

from hardneg.samplers.batch_config import HardnessSamplerConfig
from hardneg.samplers.batch_stats import batch_stats
from hardneg.samplers.chain import chain_batches, grit_chain
from hardneg.samplers.falcon import FalconPolicy
from hardneg.samplers.quantile_rules import quantile_rule
from hardneg.samplers.store import EmbeddingStore

POLICY_MODES = ("batch_level", "falcon")
RESUME_KEYS = ("batch_size", "search_space_size", "mode", "seed")
"""Config fields that must match between a saved sampler state and the sampler loading it."""


@dataclass
class _EpochProgress:
    """Where the sampler is inside an epoch (everything needed to resume it)."""

    epoch: int
    rng: np.random.Generator
    spaces: list[np.ndarray]
    random_epoch: bool
    built: list[list[int]] = field(default_factory=list)
    stats: list[dict] = field(default_factory=list)
    yielded: int = 0
    next_space: int = 0
    finished: bool = False


class HardnessBatchSampler(Sampler[list[int]]):
    r"""Batch sampler of GRIT-VLP / FALCON and their heuristic baselines.

    Each epoch (seeded by ``(seed, epoch)``), the items are shuffled and cut into search spaces
    of |M| items (``⌊N/|M|⌋`` spaces, the remainder joining the last one; mode ``random``: one
    space of all items). A space's batches are built when the iteration reaches it (so a
    FALCON policy updated during the epoch is used for later spaces) from the embedding
    store: mode ``grit`` cuts GRIT-VLP's alternating chain on ``U Vᵀ`` into batches
    (:func:`~hardneg.samplers.chain.grit_chain`); the quantile modes run
    :func:`~hardneg.samplers.chain.chain_batches` on ``S = U Vᵀ + V Uᵀ`` with the mode's q. The
    space's batches are yielded in shuffled order. Leftover items (< B per space) are
    dropped for the epoch (as ``drop_last``). An epoch that starts before every item has an
    embedding (the first epoch) uses random batches with the same space layout, as GRIT-VLP.

    Training protocol: ``set_epoch(e)`` before iterating; after each step
    ``update_embeddings(batch_indices, image_emb, text_emb)`` with the detached pooled
    embeddings already computed (the global batch under DDP, so all ranks hold the same store);
    in modes ``falcon``/``batch_level``, ``policy.reinforce(Δ)`` once per trained batch (Δ
    identical on all ranks).

    DDP: every rank holds an identical sampler (no rank in any seed) and iterates the same
    global batches; load ``shard(batch, rank, world_size)``.

    Diagnostics: :attr:`last_batch_stats` describes the last yielded batch: ``epoch``,
    ``batch`` (index in the epoch), ``random`` (fallback/random batch), ``q_mean``, ``q_p10``,
    ``q_p50``, ``q_p90`` (quantiles used; 1 in mode ``grit``), ``pick_sim_mean`` (similarity
    of each pick to its anchor: S in the quantile modes, the cosine of the direction used in
    mode ``grit``), ``fn_rate`` (% of ordered in-batch pairs i ≠ j with the same semantic id, i.e.
    false negatives; None without ``semantic_ids``), ``q_dup_mean`` / ``q_nodup_mean`` (mean q of
    the anchors whose search space holds / does not hold another item of their meaning). Unavailable
    values are None.

    Args:
        num_items: dataset size N (≥ B).
        config: :class:`HardnessSamplerConfig`.
        policy: the :class:`FalconPolicy` of modes ``falcon`` (instance level) and
            ``batch_level`` (``instance_level=False``); None otherwise.
        semantic_ids: optional (N,) ground-truth semantic ids for the FN-rate diagnostic.

    Example:
        >>> sampler = HardnessBatchSampler(40, HardnessSamplerConfig(4, mode="grit"))
        >>> sampler.set_epoch(0)
        >>> first = list(sampler)  # no embeddings yet: random batches
        >>> len(first), len(first[0])
        (10, 4)
        >>> sampler.update_embeddings(torch.arange(40), torch.randn(40, 8), torch.randn(40, 8))
        >>> sampler.set_epoch(1)
        >>> batch = next(iter(sampler)); sampler.last_batch_stats["q_mean"]
        1.0
    """

    def __init__(
        self,
        num_items: int,
        config: HardnessSamplerConfig,
        policy: FalconPolicy | None = None,
        semantic_ids: ArrayLike | None = None,
    ) -> None:
        if num_items < config.batch_size:
            raise ValueError(
                f"num_items={num_items} is smaller than batch_size={config.batch_size}; use a "
                "smaller batch or a larger dataset"
            )
        if config.mode in POLICY_MODES:
            if policy is None:
                raise ValueError(f"mode={config.mode!r} needs a FalconPolicy (policy=...)")
            wanted = config.mode == "falcon"
            if policy.config.instance_level != wanted:
                raise ValueError(
                    f"mode={config.mode!r} needs a policy with instance_level={wanted}, got "
                    f"{policy.config.instance_level}; set FalconConfig.instance_level"
                )
        elif policy is not None:
            raise ValueError(
                f"policy is only used in modes {POLICY_MODES}, but mode={config.mode!r}"
            )
        if semantic_ids is not None:
            semantic_ids = np.asarray(semantic_ids)
            if semantic_ids.shape != (num_items,):
                raise ValueError(
                    f"semantic_ids must have shape ({num_items},) (one id per item), got "
                    f"{semantic_ids.shape}"
                )
        super().__init__()
        self.num_items = num_items
        self.config = config
        self.policy = policy
        self.semantic_ids = semantic_ids
        self.store = EmbeddingStore(num_items)
        self.epoch = 0
        self.last_batch_stats: dict = {}
        self._progress: _EpochProgress | None = None

    # ------------------------------------------------------------------ public protocol
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate (keeps an unfinished, resumed epoch of the same number)."""
        p = self._progress
        if p is not None and p.epoch == epoch and not p.finished:
            return
        self.epoch = epoch
        self._progress = None

    def update_embeddings(self, indices: Tensor, image_emb: Tensor, text_emb: Tensor) -> None:
        """Store the detached pooled embeddings of a trained batch (see :class:`EmbeddingStore`)."""
        self.store.update(indices, image_emb, text_emb)

    def __len__(self) -> int:
        return sum(
            len(space) // self.config.batch_size
            for space in self._layout(np.arange(self.num_items))
        )

    def __iter__(self) -> Iterator[list[int]]:
        if self._progress is None or self._progress.finished:
            self._progress = self._start_epoch(self.epoch)
        p = self._progress
        while True:
            while p.yielded < len(p.built):
                batch, stats = p.built[p.yielded], p.stats[p.yielded]
                self.last_batch_stats = {"epoch": p.epoch, "batch": p.yielded, **stats}
                p.yielded += 1
                yield list(batch)
            if p.next_space >= len(p.spaces):
                break
            self._build_space(p, p.next_space)
            p.next_space += 1
        p.finished = True

    def state_dict(self, consumed: int | None = None) -> dict:
        """Everything needed to continue the run: epoch position, RNG, store, policy.

        Args:
            consumed: batches of the current epoch actually trained, when a DataLoader
                prefetches ahead of training (``num_workers > 0``); None = all yielded ones.
                The batches yielded after that are replayed on resume.
        """
        p = self._progress
        progress = None
        if p is not None:
            position = p.yielded if consumed is None else consumed
            if not 0 <= position <= p.yielded:
                raise ValueError(
                    f"consumed={consumed} but {p.yielded} batches of epoch {p.epoch} were "
                    "yielded; pass the number of batches trained in this epoch"
                )
            progress = {
                "epoch": p.epoch,
                "rng": p.rng.bit_generator.state,
                "random_epoch": p.random_epoch,
                "built": [list(b) for b in p.built],
                "stats": [dict(s) for s in p.stats],
                "yielded": position,
                "next_space": p.next_space,
                "finished": p.finished and position == p.yielded,
            }
        return {
            "num_items": self.num_items,
            "config": {key: getattr(self.config, key) for key in RESUME_KEYS},
            "epoch": self.epoch,
            "progress": progress,
            "store": self.store.state_dict(),
            "policy": None if self.policy is None else self.policy.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; the next iteration continues where it stopped."""
        if state["num_items"] != self.num_items:
            raise ValueError(
                f"sampler state is for {state['num_items']} items but this sampler has "
                f"{self.num_items}; resume with the same dataset"
            )
        for key in RESUME_KEYS:
            if state["config"][key] != getattr(self.config, key):
                raise ValueError(
                    f"sampler state has {key}={state['config'][key]!r} but this sampler has "
                    f"{getattr(self.config, key)!r}; resume with the same HardnessSamplerConfig"
                )
        if (state["policy"] is None) != (self.policy is None):
            raise ValueError(
                "sampler state and this sampler disagree on having a policy; "
                "resume with the same mode"
            )
        self.epoch = int(state["epoch"])
        self.store.load_state_dict(state["store"])
        if self.policy is not None:
            self.policy.load_state_dict(state["policy"])
        saved = state["progress"]
        if saved is None:
            self._progress = None
            return
        p = self._start_epoch(int(saved["epoch"]))  # re-derives the same space layout
        p.rng.bit_generator.state = saved["rng"]
        p.random_epoch = bool(saved["random_epoch"])
        p.built = [list(b) for b in saved["built"]]
        p.stats = [dict(s) for s in saved["stats"]]
        p.yielded = int(saved["yielded"])
        p.next_space = int(saved["next_space"])
        p.finished = bool(saved["finished"])
        self._progress = p

    # ------------------------------------------------------------------ internals
    def _layout(self, perm: np.ndarray) -> list[np.ndarray]:
        """Cut a permutation into search spaces (the remainder joins the last one)."""
        if self.config.mode == "random":
            return [perm]
        size = self.config.search_space_size
        assert size is not None  # set by HardnessSamplerConfig.__post_init__
        count = max(1, len(perm) // size)
        return [perm[i * size : (i + 1) * size if i < count - 1 else None] for i in range(count)]

    def _start_epoch(self, epoch: int) -> _EpochProgress:
        rng = np.random.default_rng([self.config.seed, epoch])
        spaces = self._layout(rng.permutation(self.num_items))
        random_epoch = self.config.mode == "random" or not self.store.is_complete()
        return _EpochProgress(epoch=epoch, rng=rng, spaces=spaces, random_epoch=random_epoch)

    def _build_space(self, p: _EpochProgress, index: int) -> None:
        items = p.spaces[index]
        bsz = self.config.batch_size
        if p.random_epoch:
            for start in range(0, len(items) - bsz + 1, bsz):
                batch = [int(i) for i in items[start : start + bsz]]
                self._append(p, batch, None, None)
                if self.policy is not None:
                    self.policy.record(torch.zeros(0, self.policy.config.m), torch.zeros(0))
            return
        if self.config.mode == "grit":
            i2t = self.store.image_text_similarity(items).numpy()
            chain, decide = grit_chain(i2t, bsz, p.rng), None
        else:
            sim = self.store.similarity(items)
            position = p.epoch + index / len(p.spaces)
            q_of, decide = quantile_rule(
                self.config, self.policy, position, sim, len(items) // bsz, p.rng
            )
            chain = chain_batches(sim.numpy(), bsz, q_of, p.rng)
        duplicate = None  # items whose meaning recurs in the space (potential FNs)
        if self.semantic_ids is not None:
            _, inverse, counts = np.unique(
                self.semantic_ids[items], return_inverse=True, return_counts=True
            )
            duplicate = counts[inverse] > 1
        for number in p.rng.permutation(len(chain.batches)):
            batch = [int(items[i]) for i in chain.batches[number]]
            dup = None if duplicate is None else duplicate[chain.anchors[number]]
            self._append(p, batch, chain.qs[number], chain.pick_sims[number], dup)
            if decide is not None:
                decide(int(number), chain.anchors[number])

    def _append(
        self,
        p: _EpochProgress,
        batch: list[int],
        qs: list[float] | None,
        pick_sims: list[float] | None,
        anchor_has_duplicate: np.ndarray | None = None,
    ) -> None:
        p.built.append(batch)
        p.stats.append(batch_stats(batch, qs, pick_sims, self.semantic_ids, anchor_has_duplicate))
