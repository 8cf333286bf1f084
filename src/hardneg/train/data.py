"""In-memory training/evaluation tensors for a DigitScenes run.

Scenes are small (48×48), so every split lives in memory as uint8 tensors and a batch is an
index lookup — no DataLoader workers needed on a 2-core machine. Captions are rows of a
:class:`~hardneg.train.textbank.TextBank` of frozen text-tower features.

False negatives at a controlled rate (``data.false_negative_percent``), from one of two
sources (``data.false_negative_source``):

- ``"partial"``: training draws, per scene and step, one of the scene's partial captions
  ("a red 3") with probability f instead of a full caption. A partial caption is true of
  every scene holding its object, so in a batch it is a false negative of each such scene.
  :func:`partial_caption_probability` derives f from the rate.
- ``"repeats"``: the train split shows a few scene configurations many times (new scans,
  layout and caption templates each time), like the near-duplicates of web data; every caption
  stays a full one. :func:`repeat_build` derives the number of repeats from the rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from hardneg.data.digitscenes import PRESETS, DigitScenesConfig, SceneSplit, load_digitscenes
from hardneg.data.scene_captions import COLOURS, N_COMBOS, N_SEMANTIC_IDS, PERTURBATIONS
from hardneg.models.inputs import Images
from hardneg.models.outputs import ImageOutput
from hardneg.models.text import TextTower
from hardneg.train.config import DataConfig, TrainConfig
from hardneg.train.textbank import TextBank, encode_bank

# meaning ids of captions that describe one object only ("a red 3"): offset + digit·6 + colour
PARTIAL_MEANING_OFFSET = N_SEMANTIC_IDS
#: values of ``data.false_negative_source``
FALSE_NEGATIVE_SOURCES = ("partial", "repeats")


@dataclass
class SplitTensors:
    """One split: images (N, 3, H, W) uint8, caption rows (N, C), semantic ids (N,), hard
    negative caption rows (N, K) (−1 = none), and the :class:`SceneSplit` annotations.

    ``hard_negative_kinds`` (N, K) index :data:`~hardneg.data.PERTURBATIONS` (−1 = none) and
    ``hard_negative_sources`` (N, K) name the caption column each hard negative perturbs.

    ``partial_rows`` (N, P) are the text-bank rows of captions that describe only one object of
    the scene (−1 = none; P = 0 when the build has none): they are true of every scene that
    holds that object, so they are the benchmark's false negatives. :meth:`relevance` says
    exactly which caption meanings are true of which scenes.
    """

    images: Tensor
    caption_rows: Tensor
    semantic_ids: Tensor
    hard_negative_rows: Tensor
    scenes: SceneSplit
    partial_rows: Tensor | None = None
    hard_negative_kinds: Tensor | None = None
    hard_negative_sources: Tensor | None = None
    #: features of a frozen image tower (set by the trainer), used instead of the images
    image_features: ImageOutput | None = None

    def __post_init__(self) -> None:
        if self.partial_rows is None:
            self.partial_rows = torch.full((len(self), 0), -1, dtype=torch.long)
        for name in ("hard_negative_kinds", "hard_negative_sources"):
            if getattr(self, name) is None:  # unknown: no kind, no caption to pair with
                setattr(self, name, torch.full_like(self.hard_negative_rows, -1))
        digits = torch.from_numpy(np.asarray(self.scenes.digits, dtype=np.int64))
        colours = torch.from_numpy(np.asarray(self.scenes.colours, dtype=np.int64))
        # (N, 3) object codes digit·6 + colour, −1 for absent objects
        self.object_codes = torch.where(digits >= 0, digits * len(COLOURS) + colours, -1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def caption_meanings(self) -> Tensor:
        """(N, C + P) meaning id of every caption slot: full captions carry the scene's
        semantic id, partial ones ``PARTIAL_MEANING_OFFSET + object code`` (−1 = no caption)."""
        full = self.semantic_ids[:, None].expand_as(self.caption_rows)
        assert self.partial_rows is not None
        p = self.partial_rows.shape[1]
        partial = PARTIAL_MEANING_OFFSET + self.object_codes[:, :p]
        partial = torch.where(self.partial_rows >= 0, partial, -1)
        return torch.cat([full, partial], dim=1)

    def relevance(self, scenes: Tensor, meanings: Tensor) -> Tensor:
        """``(len(scenes), len(meanings))`` bool: caption meaning ``m`` is true of scene ``s``
        (same canonical description, or the one object a partial caption names is in it)."""
        scenes, meanings = scenes.long().cpu(), meanings.long().cpu()
        full = self.semantic_ids[scenes][:, None] == meanings[None, :]
        codes = self.object_codes[scenes]  # (n, 3)
        part = meanings - PARTIAL_MEANING_OFFSET
        hit = (codes[:, :, None] == part[None, None, :]).any(dim=1) & (part >= 0)[None, :]
        return full | hit

    def image_batch(self, index: Tensor, device: torch.device | str) -> Tensor:
        """Float images in [0, 1] of the given scenes."""
        return self.images[index].to(device, non_blocking=True).float().div_(255.0)

    def images_of(self, index: Tensor, device: torch.device | str) -> Images:
        """The given scenes as a model reads them: the frozen tower's cached features when the
        split holds them, else the images."""
        feats = self.image_features
        if feats is None:
            return Images(pixels=self.image_batch(index, device))
        return Images(
            features=ImageOutput(
                feats.tokens[index].to(device), feats.pooled[index].to(device), feats.grid
            )
        )


def _split_tensors(split: SceneSplit, bank: TextBank) -> SplitTensors:
    # train's partial captions are encoded only when training draws them; every other caption
    # must be in the bank (a KeyError names the missing one)
    lenient = split.name == "train"
    images = torch.from_numpy(np.ascontiguousarray(split.images)).permute(0, 3, 1, 2).contiguous()
    n_caps = max(len(c) for c in split.captions)
    caption_rows = torch.stack([bank.rows((caps * n_caps)[:n_caps]) for caps in split.captions])
    partial = torch.full((len(split), split.digits.shape[1]), -1, dtype=torch.long)
    for i, caps in enumerate(split.partial_captions):
        for k, caption in enumerate(caps):  # column k = object k
            partial[i, k] = bank.index.get(caption, -1) if lenient else bank.rows([caption])[0]
    k = max((len(h) for h in split.hard_negatives), default=0)
    hard = torch.full((len(split), max(k, 1)), -1, dtype=torch.long)
    kinds, sources = hard.clone(), hard.clone()
    for i, negs in enumerate(split.hard_negatives):
        known = [h for h in negs if h.caption in bank.index]
        if known:
            hard[i, : len(known)] = bank.rows([h.caption for h in known])
            kinds[i, : len(known)] = torch.tensor([PERTURBATIONS.index(h.kind) for h in known])
            sources[i, : len(known)] = torch.tensor([h.source for h in known])
    return SplitTensors(
        images=images,
        caption_rows=caption_rows,
        semantic_ids=torch.from_numpy(np.asarray(split.semantic_ids, dtype=np.int64)),
        hard_negative_rows=hard,
        scenes=split,
        partial_rows=partial,
        hard_negative_kinds=kinds,
        hard_negative_sources=sources,
    )


def false_negative_pair_rates(split: SplitTensors) -> tuple[float, float]:
    """``(p_full, p_partial)``: the probability that the caption drawn for a scene a is true of
    another scene b, for a uniformly random ordered pair a ≠ b (a random batch's pairs).

    ``p_full`` (a's caption is a full one): ``Σ_s n_s (n_s − 1) / (N (N − 1))`` over semantic
    ids s held by n_s scenes. ``p_partial`` (a's caption names one of its objects, uniformly):
    ``mean_a mean_{o ∈ a} (m_o − 1) / (N − 1)`` with m_o the number of scenes holding object o.
    ``p_partial = p_full`` when the build has no partial captions.
    """
    n = len(split)
    _, counts = torch.unique(split.semantic_ids, return_counts=True)
    p_full = float((counts * (counts - 1)).sum()) / (n * (n - 1))
    assert split.partial_rows is not None
    has = split.partial_rows >= 0  # (N, P) objects with a partial caption
    if not has.any():
        return p_full, p_full
    codes = split.object_codes[:, : has.shape[1]]
    holds = (codes[:, :, None] == torch.arange(N_COMBOS)).any(dim=1)  # (N, 60)
    others = (holds.sum(dim=0)[codes.clamp_min(0)] - 1).double() / (n - 1)  # (N, P)
    per_scene = (others * has).sum(dim=1) / has.sum(dim=1).clamp_min(1)
    return p_full, float(per_scene[has.any(dim=1)].mean())


def partial_caption_probability(split: SplitTensors, percent: float) -> float:
    """Probability f of drawing a partial caption so that random batches hold ``percent`` %
    false negatives among their ordered (anchor, candidate) pairs: the expected share is
    ``(1 − f) p_full + f p_partial`` (:func:`false_negative_pair_rates`), so
    ``f = (percent / 100 − p_full) / (p_partial − p_full)``; 0 % means off (f = 0).

    Raises:
        ValueError: ``percent`` is outside ``[100 p_full, 100 p_partial]`` (names
            ``data.false_negative_percent`` and the reachable range).
    """
    if percent == 0:
        return 0.0
    p_full, p_partial = false_negative_pair_rates(split)
    low, high = 100.0 * p_full, 100.0 * p_partial
    if not low <= percent <= high:
        raise ValueError(
            f"data.false_negative_percent={percent} cannot be reached on this train split: "
            f"random batches hold at least {low:.4f} % false negatives (full captions only) and "
            f"at most {high:.4f} % (partial captions only); use 0 (off) or a value in that range"
        )
    return (percent / 100.0 - p_full) / (p_partial - p_full) if high > low else 0.0


def repeat_build(
    build: DigitScenesConfig, percent: float, configurations: int
) -> DigitScenesConfig:
    """``build`` with ``configurations`` repeated scene configurations of k scenes each, k the
    fewest scenes for which ``G k (k − 1) / (N (N − 1))`` (the share of ordered train pairs
    that share a configuration, G = ``configurations``, N = ``build.n_train``) reaches
    ``percent`` %: the configured rate is a floor (1 % with 4 configurations of 2000 scenes:
    k = 101, 1.01 %).

    Raises:
        ValueError: the rate needs more scenes than the train split holds (names
            ``data.false_negative_percent`` and the largest reachable value).
    """
    if percent == 0:
        return build
    n, g = build.n_train, configurations
    pairs = percent / 100.0 * n * (n - 1) / g  # k (k − 1) per configuration
    k = max(2, math.ceil((1.0 + math.sqrt(1.0 + 4.0 * pairs)) / 2.0) - 1)
    while k * (k - 1) < pairs:  # the root's rounding: the fewest k that reach the rate
        k += 1
    if g * k > n:
        top = 100.0 * g * (n // g) * (n // g - 1) / (n * (n - 1))
        raise ValueError(
            f"data.false_negative_percent={percent} cannot be reached with "
            f"data.repeated_configs={g} on {n} train scenes: use a value ≤ {top:.2f} or change "
            "data.repeated_configs"
        )
    return replace(build, repeated_configs=g, repeats=k)


def draw_captions(
    split: SplitTensors, index: Tensor, partial_probability: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """One caption per scene of ``index``: text-bank rows (n,) and caption meanings (n,).

    A uniformly random full caption; with probability ``partial_probability`` instead a partial
    caption of one of the scene's objects (uniformly). With probability 0 no extra random
    numbers are drawn, so the draw is exactly the full-caption-only one.
    """
    slots = torch.cat([split.caption_rows, split.partial_rows], dim=1)[index]
    meanings = split.caption_meanings()[index]
    n_caps = split.caption_rows.shape[1]
    col = torch.randint(0, n_caps, (len(index),), generator=generator)
    if partial_probability > 0:
        u = torch.rand(len(index), 2, generator=generator)
        n_obj = (slots[:, n_caps:] >= 0).sum(dim=1)
        obj = torch.minimum((u[:, 1] * n_obj).long(), (n_obj - 1).clamp_min(0))
        col = torch.where((u[:, 0] < partial_probability) & (n_obj > 0), n_caps + obj, col)
    rows = slots.gather(1, col[:, None]).squeeze(1)
    return rows, meanings.gather(1, col[:, None]).squeeze(1)


def draw_valid(rows: Tensor, generator: torch.Generator) -> Tensor:
    """One uniformly random valid entry (≥ 0) of each row of ``rows`` (n, K); −1 for a row with
    none (e.g. one hard-negative caption per scene)."""
    return rows.gather(1, _column(torch.rand(rows.shape, generator=generator), rows >= 0))[:, 0]


def _column(draw: Tensor, usable: Tensor) -> Tensor:
    """(n, 1) column of the largest ``draw`` among the ``usable`` entries of each row."""
    return draw.masked_fill(~usable, -1.0).argmax(dim=1, keepdim=True)


def draw_hard_negatives(
    split: SplitTensors,
    index: Tensor,
    rows: Tensor,
    meanings: Tensor,
    kinds: Sequence[str],
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """One hard-negative caption per scene of ``index`` and the positives it is paired with.

    The negative is drawn uniformly among the scene's hard negatives of ``kinds``; when the
    scene's drawn caption (``rows``, ``meanings`` from :func:`draw_captions`) is a full one,
    the positive becomes the caption the negative rewrites, so that the pair differs only in
    the rewrite — NegCLIP's negatives are rewrites of the caption itself (Yuksekgonul et al.
    2023, §5). A partial caption keeps its row (its scene's negative then rewrites one of the
    scene's full captions).

    Returns:
        ``(hard_rows, rows)``: text-bank rows of the negatives (−1: the scene has none of
        ``kinds``) and of the positives. The random numbers drawn depend on neither ``kinds``
        nor the data.
    """
    hard = split.hard_negative_rows[index]
    draw = torch.rand(hard.shape, generator=generator)
    wanted = (hard >= 0) & torch.isin(split.hard_negative_kinds[index], _kind_ids(kinds))
    col = _column(draw, wanted)
    hard_rows = torch.where(wanted.gather(1, col), hard.gather(1, col), -1)[:, 0]
    source = split.hard_negative_sources[index].gather(1, col)[:, 0]
    full = (meanings < PARTIAL_MEANING_OFFSET) & (hard_rows >= 0) & (source >= 0)
    paired = split.caption_rows[index].gather(1, source.clamp_min(0)[:, None])[:, 0]
    return hard_rows, torch.where(full, paired, rows)


def _kind_ids(kinds: Sequence[str]) -> Tensor:
    return torch.tensor([PERTURBATIONS.index(k) for k in kinds], dtype=torch.long)


def outside_captions(
    split: SplitTensors, index: Tensor, count: int, generator: torch.Generator
) -> Tensor:
    """Text-bank rows of ``count`` full captions of scenes whose semantic id is not in the
    batch ``index`` (uniformly drawn): true of no scene of the batch."""
    ids = split.semantic_ids
    outside = torch.nonzero(~torch.isin(ids, ids[index]))[:, 0]
    if not len(outside):
        raise ValueError("every semantic id is in the batch: use a batch_size below the scenes")
    pick = outside[torch.randint(0, len(outside), (count,), generator=generator)]
    return split.caption_rows[pick, 0]


def in_batch_fn_rate(split: SplitTensors, index: Tensor, meanings: Tensor) -> float:
    """% of ordered in-batch pairs (a, b), a ≠ b, whose caption a (meaning ``meanings[a]``) is
    true of scene ``index[b]``: the false negatives among a batch's in-batch negatives."""
    rel = split.relevance(index, meanings)
    n = len(index)
    return 100.0 * float(rel.sum() - rel.diagonal().sum()) / (n * (n - 1))


def run_data_config(cfg: TrainConfig) -> DataConfig:
    """The data config a run of ``cfg`` loads with :func:`load_run_data`, in a normal form.

    The training split's hard-negative captions are encoded (``encode_all``) when NegCLIP's
    extras (``data.hard_negative_captions``) or the pre-training stage's negatives
    (``pretrain.negative_kinds``) need them; the fields that only the step's draws read are
    reset to their defaults. So two runs that need the same text bank and scenes get equal
    configs (the bench's workers share the data of such runs).
    """
    data = cfg.data
    needs_negatives = data.hard_negative_captions or bool(cfg.pretrain.negative_kinds)
    defaults = DataConfig()
    return replace(
        data,
        encode_all=data.encode_all or needs_negatives,
        hard_negative_captions=defaults.hard_negative_captions,
        hard_negative_kinds=defaults.hard_negative_kinds,
    )


def load_run_data(
    config: DataConfig,
    tower: TextTower,
    progress: bool = True,
    splits: tuple[str, ...] = ("train", "test", "test_novel"),
) -> tuple[TextBank, dict[str, SplitTensors]]:
    """Generate (or load) DigitScenes and encode the needed captions once with the frozen tower.

    Encoded: every caption (full and partial) of ``splits`` — train's partial ones only with
    ``data.false_negative_source="partial"`` —, the hard-negative captions of the evaluation
    splits, and those of train only when ``config.hard_negative_captions`` (NegCLIP) or
    ``config.encode_all`` asks for them.
    """
    kind, _, preset = config.dataset.partition(":")
    preset = preset or config.preset
    if kind != "digitscenes":
        raise ValueError(
            f"data.dataset={config.dataset!r}: load_run_data builds DigitScenes only (other "
            "sources train through hardneg.train.recipes.files)"
        )
    if preset not in PRESETS:
        raise ValueError(f"data.preset={preset!r} unknown; choose one of {sorted(PRESETS)}")
    build = replace(PRESETS[preset], seed=config.seed)
    if config.false_negative_source == "repeats":
        build = repeat_build(build, config.false_negative_percent, config.repeated_configs)
    scenes = load_digitscenes(build, cache_dir=config.cache_dir, splits=splits)
    texts: list[str] = []
    for name, split in scenes.items():
        # partial captions: retrieval texts of the evaluation splits; of train only when the
        # false negatives come from them (or may: the default source)
        partial = name != "train" or config.false_negative_source == "partial"
        for caps in (*split.captions, *(split.partial_captions if partial else ())):
            texts.extend(caps)
        # hard-negative captions: probes of the evaluation splits, NegCLIP extras of train
        if name != "train" or config.hard_negative_captions or config.encode_all:
            for negs in split.hard_negatives:
                texts.extend(h.caption for h in negs)
    bank = encode_bank(tower, texts, config.max_text_len, config.cache_dir, progress=progress)
    return bank, {name: _split_tensors(split, bank) for name, split in scenes.items()}
