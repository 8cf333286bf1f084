"""A user's CLIP as hardneg towers: build from a :class:`~hardneg.models.specs.ModelSpec`,
write the trained temperature back, export in the model's own library format.

- open_clip: ``open_clip.create_model(name, pretrained=FILE)`` (a config JSON is registered
  with ``open_clip.add_model_config`` and built by its file name, as open_clip does), the
  tokenizer ``open_clip.get_tokenizer(name)`` (its BPE vocabulary ships in the wheel), the
  model's preprocessing mean/std and image size;
- hf_clip: :meth:`~hardneg.models.hf_clip.HFCLIPAdapter.from_pretrained` (the directory's
  tokenizer and image processor).

The towers take ``(B, 3, H, W)`` images in [0, 1] and resize/normalise them themselves.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hardneg.models.hf_clip import HFCLIPAdapter, load_hf_clip
from hardneg.models.open_clip import OpenCLIPAdapter
from hardneg.models.specs import ModelSpec, is_config_path
from hardneg.models.text import TextTower


@dataclass
class CLIPTowers:
    """The two towers of a CLIP model and what training and export need besides them.

    Attributes:
        image_tower: image half (``forward(images in [0, 1]) -> ImageOutput``).
        text_tower: text half (a :class:`~hardneg.models.text.TextTower`).
        logit_scale: ``exp`` of the checkpoint's log logit scale (``1/τ``, e.g. 100 for
            OpenAI CLIP), the natural initial temperature of the contrastive loss.
        image_size: side of the model's square input in pixels.
        model: the underlying open_clip ``CLIP`` / ``transformers.CLIPModel`` (shares the
            towers' parameters; used for write-back and export).
        spec: the spec it was built from.
        processor: HF only: the directory's processor (tokenizer + image processor), saved
            next to an exported model.
    """

    image_tower: nn.Module
    text_tower: TextTower
    logit_scale: float
    image_size: int
    model: nn.Module
    spec: ModelSpec
    processor: Any = None


def build_clip_towers(spec: ModelSpec) -> CLIPTowers:
    """Build the towers of an ``open_clip`` or ``hf_clip`` spec (CPU, fp32, eval mode).

    Raises:
        ValueError: a builtin spec, or weights that do not fit the open_clip architecture.

    Example:
        >>> from hardneg.models.specs import parse_model_spec
        >>> spec = parse_model_spec("open_clip:ViT-B-32", "weights.bin")  # doctest: +SKIP
        >>> towers = build_clip_towers(spec)  # doctest: +SKIP
        >>> towers.image_size, towers.logit_scale  # doctest: +SKIP
        (224, 100.0)
    """
    if spec.kind == "open_clip" and spec.name:
        return _build_open_clip(spec)
    if spec.kind == "hf_clip" and spec.name:
        model, processor = load_hf_clip(spec.name)
        model.eval()
        adapter = HFCLIPAdapter(model, processor)
        size = int(model.config.vision_config.image_size)
        return CLIPTowers(adapter.image, adapter.text, _scale(model), size, model, spec, processor)
    raise ValueError(
        f"build_clip_towers needs an open_clip or hf_clip spec, got {str(spec)!r}; the builtin "
        "towers come from hardneg.models.build_image_tower and MiniLMTextTower"
    )


def _build_open_clip(spec: ModelSpec) -> CLIPTowers:
    import open_clip

    name = str(spec.name)
    if is_config_path(name):
        open_clip.add_model_config(name)
        name = Path(name).stem
    try:
        model = open_clip.create_model(name, pretrained=spec.pretrained)
    except RuntimeError as err:
        if spec.pretrained is None:
            raise
        detail = " ".join(str(err).split())[:300]
        raise ValueError(
            f"model.pretrained={spec.pretrained!r} does not fit open_clip:{spec.name} "
            f"({detail}); pass the weights of this architecture"
        ) from err
    model.eval()
    adapter = OpenCLIPAdapter(model, open_clip.get_tokenizer(name))
    return CLIPTowers(
        adapter.image, adapter.text, _scale(model), int(adapter.image.image_size[0]), model, spec
    )


def _scale(model: Any) -> float:
    return float(model.logit_scale.detach().exp())


def write_back_logit_scale(towers: CLIPTowers, scale: float) -> None:
    """Store a trained logit scale (the loss's ``exp(log_scale)``) in the model's
    ``logit_scale`` parameter, in log space as open_clip and transformers keep it, so an
    exported model carries the trained temperature rather than the checkpoint's.

    Raises:
        ValueError: ``scale`` is not a positive finite number.
    """
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(
            f"logit_scale must be a positive finite number (exp of the loss's log scale), "
            f"got {scale}"
        )
    with torch.no_grad():
        towers.model.logit_scale.fill_(math.log(scale))
    towers.logit_scale = scale


def export_clip(towers: CLIPTowers, out_dir: str | Path, logit_scale: float) -> Path:
    """Write the trained model in its own library's format, loadable without hardneg.

    - hf_clip → ``out_dir/hf_clip/`` (``save_pretrained`` of the model and its processor):
      ``CLIPModel.from_pretrained(dir)``, ``AutoProcessor.from_pretrained(dir)``;
    - open_clip → ``out_dir/open_clip.pt`` (a state_dict) and, for a config-JSON spec, the
      JSON next to it: ``open_clip.create_model(name, pretrained=path)`` (first
      ``open_clip.add_model_config(json)`` and name = the JSON's file stem).

    Args:
        towers: the trained towers.
        out_dir: output directory (created).
        logit_scale: the trained scale, written back first (:func:`write_back_logit_scale`).

    Returns:
        the HF directory or the ``.pt`` file.
    """
    write_back_logit_scale(towers, logit_scale)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if towers.spec.kind == "hf_clip":
        target = out_dir / "hf_clip"
        towers.model.save_pretrained(target)
        if towers.processor is not None:
            towers.processor.save_pretrained(target)
        return target
    target = out_dir / "open_clip.pt"
    state = {k: v.detach().cpu() for k, v in towers.model.state_dict().items()}
    torch.save(state, target)
    if towers.spec.name and is_config_path(towers.spec.name):
        config = Path(towers.spec.name)
        if config.resolve() != (out_dir / config.name).resolve():
            shutil.copyfile(config, out_dir / config.name)
    return target
