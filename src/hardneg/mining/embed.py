"""Embed a source's images and captions with a model, cached on disk so a killed run resumes.

The model is a trained hardneg run (``--run DIR``: its ``checkpoint.pt`` and config, loaded as
``hardneg eval`` does) or a CLIP spec (``--model open_clip:…|hf_clip:…`` with
``--pretrained``); the builtin towers exist only once trained, so they come from a run.

The cache is a folder of chunk files, ``images-<start>.pt`` / ``captions-<start>.pt`` (rows
``start … start + chunk - 1``, unit-norm fp32), each written atomically, and ``key.json``,
the fingerprint of the model and the source they were computed from. A chunk that is missing
or unreadable (a run killed while writing is impossible: the write is atomic; a file
truncated by other means is) is recomputed; a cache of another model or source is cleared.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from hardneg.data.atomic_files import atomic_write
from hardneg.data.dataset import flatten_captions
from hardneg.eval.datasets import image_embeddings, text_embeddings
from hardneg.models.alignment import AlignmentModel
from hardneg.models.inputs import Texts

__all__ = ["Embeddings", "Encoder", "embed_source", "load_encoder"]


@dataclass
class Encoder:
    """A model ready to embed: ``model.encode_images`` / ``encode_texts``, its tokenizer, the
    image side it reads, the device, and ``identity`` (what the cache key records)."""

    model: AlignmentModel
    tokenize: Callable[[list[str]], Texts]
    image_size: int
    device: torch.device
    identity: dict[str, Any]


@dataclass
class Embeddings:
    """Unit-norm embeddings of a source: ``images`` (N, d), ``captions`` (M, d) in
    :func:`~hardneg.data.dataset.flatten_captions` order, ``caption_items`` (M,) the image of
    each caption."""

    images: Tensor
    captions: Tensor
    caption_items: Tensor


def _tokenizer(text_tower: Any) -> Callable[[list[str]], Texts]:
    def tokenize(texts: list[str]) -> Texts:
        tok = text_tower.tokenize(texts)
        return Texts(tok["input_ids"], tok["attention_mask"].bool())

    return tokenize


def _file_identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def load_encoder(
    run: str | Path | None = None, model: str | None = None, pretrained: str | None = None
) -> Encoder:
    """The model of a trained run directory (``run``) or of a CLIP spec (``model``), in eval
    mode on the GPU when there is one.

    Raises:
        ValueError / FileNotFoundError: neither or both of ``run`` and ``model``, a run without
            ``checkpoint.pt`` or trained on DigitScenes' own recipe, the ``builtin`` spec, a bad
            spec or weights file (messages name the option and the fix).
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if (run is None) == (model is None):
        raise ValueError("pass exactly one of --run DIR (a trained run) or --model SPEC")
    if run is not None:
        from hardneg.train.config import config_from_dict
        from hardneg.train.trainer import Trainer, uses_digitscenes_recipe

        path = Path(run) / "checkpoint.pt"
        if not path.is_file():
            raise FileNotFoundError(f"--run: {path} does not exist; train first with --out DIR")
        state = torch.load(path, map_location="cpu", weights_only=False)
        config = config_from_dict(state["config"])
        if uses_digitscenes_recipe(config):
            raise ValueError(
                f"--run {run}: a builtin-model DigitScenes run has no image loader for files; "
                "mine with a run trained on a karpathy / csv / hf source, or --model SPEC"
            )
        trainer = Trainer(replace(config, progress=False, device=device.type))
        trainer.load_state_dict(state)
        recipe = trainer.recipe
        identity = {"run": _file_identity(path)}
        net, text_tower, image_size = recipe.model, recipe.text_tower, recipe.image_size
    else:
        from hardneg.models.clip_towers import build_clip_towers
        from hardneg.models.dual import DualEncoder
        from hardneg.models.specs import parse_model_spec

        spec = parse_model_spec(model, pretrained, key="--model", pretrained_key="--pretrained")
        if spec.kind == "builtin":
            raise ValueError(
                "--model builtin: the builtin towers are trained by hardneg; pass --run DIR "
                "of a trained run, or an open_clip:/hf_clip: spec"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # a spec without weights: the same random model every run
            towers = build_clip_towers(spec)
        dual = DualEncoder(towers.image_tower, towers.text_tower, embed_dim=None)
        net, text_tower, image_size = (
            AlignmentModel(dual, None),
            towers.text_tower,
            towers.image_size,
        )
        identity = {"model": str(spec)}
        if spec.pretrained:
            identity["pretrained"] = _file_identity(Path(spec.pretrained))
    net.to(device).eval()
    return Encoder(net, _tokenizer(text_tower), int(image_size), device, identity)


def _source_key(dataset: Any, texts: list[str], encoder: Encoder, chunk: int) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode() + b"\0")
    for path in getattr(dataset, "paths", None) or []:
        digest.update(str(path).encode() + b"\0")
    return json.dumps(
        {
            "encoder": encoder.identity,
            "source": dataset.source,
            "images": len(dataset),
            "captions": len(texts),
            "content": digest.hexdigest(),
            "image_size": encoder.image_size,
            "chunk": chunk,
        },
        sort_keys=True,
    )


def _load_chunk(path: Path, rows: int) -> Tensor | None:
    """The chunk at ``path`` if it is a readable (rows, d) tensor, else None."""
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, truncated or corrupt: recomputed
        return None
    if not isinstance(value, Tensor) or value.dim() != 2 or value.shape[0] != rows:
        return None
    return value


def _embed_side(
    name: str,
    count: int,
    embed: Callable[[int, int], Tensor],
    cache: Path,
    chunk: int,
    progress: bool,
) -> Tensor:
    out = []
    for start in tqdm(range(0, count, chunk), desc=f"embedding {name}", disable=not progress):
        rows = min(chunk, count - start)
        path = cache / f"{name}-{start:09d}.pt"
        value = _load_chunk(path, rows)
        if value is None:
            value = embed(start, rows).float().cpu().contiguous()
            atomic_write(path, lambda f, v=value: torch.save(v, f))
        out.append(value)
    return torch.cat(out)


@torch.no_grad()
def embed_source(
    dataset: Any,
    encoder: Encoder,
    cache: str | Path,
    batch_size: int = 64,
    chunk: int = 1024,
    progress: bool = True,
) -> Embeddings:
    """Unit-norm image and caption embeddings of ``dataset`` (an ``ImageCaptionDataset``
    opened at ``encoder.image_size``), read from / written to the cache folder ``cache`` in
    chunks of ``chunk`` rows (see the module docstring)."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    flat = flatten_captions(dataset)
    key = _source_key(dataset, flat.texts, encoder, chunk)
    key_file = cache / "key.json"
    if not key_file.is_file() or key_file.read_text() != key:
        for stale in [*cache.glob("images-*.pt"), *cache.glob("captions-*.pt")]:
            stale.unlink()
        atomic_write(key_file, lambda f: f.write(key.encode()))
    model, device = encoder.model, encoder.device

    def images(start: int, rows: int) -> Tensor:
        load = dataset.load_image
        return image_embeddings(model, lambda i: load(start + i), rows, device, batch_size)[0]

    def captions(start: int, rows: int) -> Tensor:
        texts = flat.texts[start : start + rows]
        return text_embeddings(model, encoder.tokenize, texts, device, batch_size)

    return Embeddings(
        _embed_side("images", len(dataset), images, cache, chunk, progress),
        _embed_side("captions", len(flat.texts), captions, cache, chunk, progress),
        torch.as_tensor(np.asarray(flat.image_index, dtype=np.int64)),
    )
