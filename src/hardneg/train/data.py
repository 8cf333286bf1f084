"""The trainer's DigitScenes data: a run's data config in normal form and the text bank and
split tensors it loads (:mod:`hardneg.data.digitscenes` builds them)."""

from __future__ import annotations

from dataclasses import replace

from hardneg.data.digitscenes.config import PRESETS
from hardneg.data.digitscenes.false_negatives import repeat_build
from hardneg.data.digitscenes.store import load_digitscenes
from hardneg.data.digitscenes.tensors import SplitTensors, split_tensors
from hardneg.data.digitscenes.textbank import TextBank, encode_bank
from hardneg.models.text import TextTower
from hardneg.train.config import DataConfig, TrainConfig

__all__ = ["load_run_data", "run_data_config"]


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
    return bank, {name: split_tensors(split, bank) for name, split in scenes.items()}
