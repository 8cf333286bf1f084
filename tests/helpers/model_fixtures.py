"""Tiny random-init CLIP checkpoints on disk for the model-spec tests (plain functions).

- :func:`write_open_clip_config`: an open_clip model-config JSON (1-layer ViT, 32 px images,
  8 px patches, width 32; 1-layer text transformer, context 16, the SimpleTokenizer
  vocabulary);
- :func:`write_open_clip_weights`: a random state_dict of that config;
- :func:`write_hf_clip_dir`: a ``CLIPModel`` + tokenizer + ``CLIPImageProcessor`` directory
  (``save_pretrained``); the tokenizer is MiniLM's BERT tokenizer (no CLIP tokenizer can be
  downloaded here), the processor has its own mean/std so a test can see that it is used;
- :func:`write_spec_files`: all of them plus a second weights file and three PNG images;
  :func:`load_images` reads the images back (PIL and [0, 1] tensor).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

#: Name (file stem) of the open_clip config JSON: not one of open_clip's own configs.
OPEN_CLIP_NAME = "hardneg-tiny-clip"
OPEN_CLIP_CONFIG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
#: Logit scales the fixtures store (distinct from both libraries' 1/0.07 initialisation).
OPEN_CLIP_SCALE = 20.0
HF_SCALE = 25.0
HF_MEAN = (0.5, 0.4, 0.3)
HF_STD = (0.2, 0.25, 0.3)


def write_open_clip_config(tmp_path: Path) -> Path:
    """Write the tiny open_clip config JSON into ``tmp_path`` and return its path."""
    path = Path(tmp_path) / f"{OPEN_CLIP_NAME}.json"
    path.write_text(json.dumps(OPEN_CLIP_CONFIG, indent=2))
    return path


def write_open_clip_weights(tmp_path: Path, config_path: Path, seed: int = 1) -> Path:
    """Random weights of the config at ``config_path`` (seeded; logit scale
    :data:`OPEN_CLIP_SCALE`), saved as a state_dict ``tmp_path/weights-{seed}.pt``."""
    from open_clip.model import CLIP

    cfg = json.loads(Path(config_path).read_text())
    torch.manual_seed(seed)
    model = CLIP(**cfg)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(OPEN_CLIP_SCALE))
    path = Path(tmp_path) / f"weights-{seed}.pt"
    torch.save(model.state_dict(), path)
    return path


def tiny_hf_clip_config(tokenizer: Any, **extra: Any) -> Any:
    """A 1-layer, width-32 ``CLIPConfig`` (image 32, patch 8, projection 16) for ``tokenizer``'s
    vocabulary and special tokens."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        projection_dim=16,
        **extra,
    )


def write_hf_clip_dir(tmp_path: Path, seed: int = 2) -> Path:
    """A tiny random ``CLIPModel`` + BERT tokenizer + ``CLIPImageProcessor`` saved with
    ``save_pretrained`` into ``tmp_path/hf_clip_model``; returns the directory."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    from hardneg.models.minilm import default_minilm_path

    tokenizer = AutoTokenizer.from_pretrained(str(default_minilm_path()), local_files_only=True)
    config = tiny_hf_clip_config(tokenizer, logit_scale_init_value=math.log(HF_SCALE))
    torch.manual_seed(seed)
    model = CLIPModel(config)
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=list(HF_MEAN),
        image_std=list(HF_STD),
    )
    path = Path(tmp_path) / "hf_clip_model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def write_spec_files(root: Path) -> dict[str, Any]:
    """Config JSON, weight files of seeds 1 and 3, an HF directory and three 32×32 PNGs."""
    root = Path(root)
    config = write_open_clip_config(root)
    rng = np.random.default_rng(0)
    images = []
    for k in range(3):
        path = root / f"img{k}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        images.append(path)
    return {
        "config": config,
        "weights": write_open_clip_weights(root, config, seed=1),
        "weights3": write_open_clip_weights(root, config, seed=3),
        "hf": write_hf_clip_dir(root),
        "images": images,
    }


def load_images(paths: list[Path]) -> tuple[list[Image.Image], torch.Tensor]:
    """PIL images (for the libraries' own preprocessing) and the same pixels as a
    ``(B, 3, H, W)`` tensor in [0, 1]."""
    pils = [Image.open(p).convert("RGB") for p in paths]
    tensor = torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in pils])
    return pils, tensor.float() / 255.0
